#!/usr/bin/env bash
# Side-by-side benchmark of lithe and Cloud Hypervisor (../shared/peers),
# on the same guest, alternating, in one run: see tests/src/bin/bench.rs.
# Writes docs/benchmarks.md. Not part of the tests: it takes ~15-25 minutes
# and its absolute times swing from day to day; read the ratios.
#   scripts/bench.sh [--runs N] [--max 4,32,64]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/deps.sh >/dev/null
guest-images/build.sh >/dev/null
cargo build --release --bin lithe --bin bench -q
table=$(mktemp)
trap 'rm -f "$table"' EXIT
target/release/bench --out "$table" "$@"
{
	echo "# Benchmarks: lithe next to Cloud Hypervisor"
	echo
	echo "Made by \`scripts/bench.sh $*\` on $(date -u +%Y-%m-%d) ($(nproc) host CPUs, KVM: $( [ -d /sys/module/kvm_pvm ] && echo kvm_pvm, software-nested || echo hardware)),"
	echo "lithe $(git rev-parse --short HEAD), Cloud Hypervisor: $(../shared/peers/cloud-hypervisor --version 2>/dev/null | head -1 || echo absent)."
	echo "Both VMMs boot the same guest-images/out/vmlinux, initramfs and command line with boot=1 and 256 MiB,"
	echo "one VM at a time, alternating which goes first. Absolute times on this machine swing ~2.5x from day"
	echo "to day: compare the ratios, which come from one run."
	echo
	cat "$table"
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md"
