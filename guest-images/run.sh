#!/usr/bin/env bash
# Boots the lithe guest image: builds it (and lithe) on first use, then runs
# lithe with the image's kernel, initramfs and command line. Extra arguments
# go to lithe, e.g.:  ./guest-images/run.sh --cpus boot=2,max=4 --api-socket /tmp/lithe.sock
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$("$here/build.sh")
(cd "$top" && cargo build --release --quiet --bin lithe)
exec "$top/target/release/lithe" \
	--kernel "$out/vmlinux" \
	--initramfs "$out/initramfs.cpio" \
	--cmdline "$(cat "$here/cmdline")" \
	--memory size=256M \
	"$@"
