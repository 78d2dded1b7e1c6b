#!/usr/bin/env bash
# Side-by-side benchmark of lithe and Cloud Hypervisor (../shared/peers),
# on the same guest, alternating, in one run: see tests/src/bin/bench/.
# Each section writes its own page: hotplug docs/benchmarks.md (~15-25
# minutes), io docs/benchmarks-io.md (~10 minutes). Not part of the tests:
# absolute times swing from day to day; read the ratios.
#   scripts/bench.sh [--runs N] [--max 4,32,64] [--sections hotplug,io]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/deps.sh >/dev/null
guest-images/build.sh >/dev/null
cargo build --release -p lithe --bin lithe -q
cargo build --release -p tests --bin bench -q

args=() sections=hotplug,io
while [ $# -gt 0 ]; do
	case $1 in
	--sections) sections=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
table=$(mktemp)
trap 'rm -f "$table"' EXIT
kvm=$([ -d /sys/module/kvm_pvm ] && echo kvm_pvm, software-nested || echo hardware)
ch=$(../shared/peers/cloud-hypervisor --version 2>/dev/null | head -1 || echo absent)

for section in ${sections//,/ }; do
	case $section in
	hotplug) page=docs/benchmarks.md title="vCPU hotplug" ;;
	io) page=docs/benchmarks-io.md title="I/O" ;;
	*) echo "bench.sh: unknown section '$section' (hotplug, io)" >&2; exit 2 ;;
	esac
	target/release/bench --out "$table" --sections "$section" "${args[@]}"
	{
		echo "# Benchmarks, $title: lithe next to Cloud Hypervisor"
		echo
		echo "Made by \`scripts/bench.sh --sections $section ${args[*]}\` on $(date -u +%Y-%m-%d) ($(nproc) host CPUs, KVM: $kvm),"
		echo "lithe $(git rev-parse --short HEAD), Cloud Hypervisor: $ch."
		echo "Both VMMs boot the same guest-images/out/vmlinux, initramfs and command line with boot=1 and 256 MiB,"
		echo "one VM at a time, alternating which goes first. Absolute times on this machine swing ~2.5x from day"
		echo "to day: compare the ratios, which come from one run."
		echo
		if [ "$section" = io ]; then
			echo "Each VM has one vCPU, a fresh copy of the same 256 MiB raw image of pseudo-random bytes"
			echo "(\`--disk path=…,image_type=raw\`, defaults otherwise), hybrid vsock (\`--vsock cid=3,socket=…\`), and"
			echo "\`lithe_bench=io\` on its command line, which starts the guest's /bin/iobench (guest-images/iobench.c)."
			echo "lithe's devices are virtio-mmio (\`pci=off\`), Cloud Hypervisor's virtio-pci: the kernel has both"
			echo "transports, and Cloud Hypervisor's command line drops \`pci=off\`. The guest times the disk phases"
			echo "(O_DIRECT on /dev/vda: 64 MiB in 1 MiB requests; 4 KiB random reads over the whole disk, QD16 as 16"
			echo "processes); the bench times 64 MiB sent into the guest over vsock. VMM CPU is the CPU time of every"
			echo "VMM thread but the vCPU threads (/proc schedstat), per request."
			echo
		fi
		cat "$table"
	} > "$page"
	echo "wrote $page"
done
