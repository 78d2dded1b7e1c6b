#!/usr/bin/env bash
# Installs what lithe's build and tests need on a fresh machine of this kind:
# Debian packages (guest kernel build, ACPI table checks with iasl, curl,
# iproute2 for the network tests' namespaces and TAPs, qemu-system-common
# for /usr/lib/qemu/virtiofsd, the virtio-fs tests' backend) and
# the Rust components (clippy, rustfmt; nightly Miri). Idempotent: checks
# with dpkg/rustup first and installs only what is missing. Needs root for
# apt-get; without it, it names what is missing and fails.
#   scripts/deps.sh [--bench]   (--bench: also QEMU, the bench's third VMM,
#   and rust-vmm's vhost-device-vsock, built from crates.io into
#   target/bench-tools: QEMU's hybrid vsock in the io and fs sections)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

pkgs=(build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils lz4 patch perl
	linux-source-6.1 acpica-tools curl e2fsprogs iproute2 qemu-system-common)
[ "${1:-}" = --bench ] && pkgs+=(qemu-system-x86)
missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}" >&2
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >/dev/null
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >/dev/null
if [ "${LITHE_SKIP_MIRI_INSTALL:-0}" != 1 ]; then
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >/dev/null ||
		echo "deps: could not install the nightly toolchain (Miri will be skipped)" >&2
	if rustup toolchain list | grep -q '^nightly'; then
		rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 ||
			echo "deps: could not add Miri to nightly (Miri will be skipped)" >&2
	fi
fi

if [ "${1:-}" = --bench ]; then
	root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	if [ ! -x "$root/target/bench-tools/bin/vhost-device-vsock" ]; then
		echo "deps: building vhost-device-vsock 0.3.0 into target/bench-tools" >&2
		cargo install -q --locked --version 0.3.0 --root "$root/target/bench-tools" vhost-device-vsock
	fi
fi
