#!/usr/bin/env bash
# Side-by-side benchmark of lithe, Cloud Hypervisor (../shared/peers) and
# QEMU (Debian's; scripts/deps.sh --bench installs it), on the same guest,
# alternating, in one run: see tests/src/bin/bench/.
# Each section writes its own page: hotplug docs/benchmarks.md (~15-25
# minutes), io docs/benchmarks-io.md (~10 minutes), net (TCP echo over a
# TAP in a network namespace; needs root) docs/benchmarks-net.md, fs (virtio-fs
# reads through the same virtiofsd) docs/benchmarks-fs.md, mem (memory grows
# by 512 MiB and shrinks back, ~10 minutes) docs/benchmarks-mem.md, netscale (lithe alone:
# TCP requests/s while the vCPUs go 1 -> 4 -> 1, ~3 minutes, needs root for
# a network namespace) docs/benchmarks-net-scale.md. Not part of the tests:
# absolute times swing from day to day; read the ratios.
#   scripts/bench.sh [--runs N] [--max 4,32,64] [--sections hotplug,io,net,fs,mem,netscale]
#                    [--vmms lithe,CH,QEMU]   (a subset, for a quick look)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/deps.sh --bench >/dev/null
guest-images/build.sh >/dev/null
cargo build --release -p lithe --bin lithe -q
cargo build --release -p tests --bin bench -q

args=() sections=hotplug,io,net,fs,mem,netscale
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
	net) page=docs/benchmarks-net.md title="TCP over a TAP" ;;
	fs) page=docs/benchmarks-fs.md title="virtio-fs" ;;
	mem) page=docs/benchmarks-mem.md title="memory hotplug" ;;
	netscale) page=docs/benchmarks-net-scale.md title="TCP throughput while the vCPUs change" ;;
	*) echo "bench.sh: unknown section '$section' (hotplug, io, net, fs, mem, netscale)" >&2; exit 2 ;;
	esac
	target/release/bench --out "$table" --sections "$section" "${args[@]}"
	{
		if [ "$section" = netscale ]; then
			echo "# Benchmarks, $title (lithe)"
		else
			echo "# Benchmarks, $title: lithe next to Cloud Hypervisor (and QEMU where it has a column)"
		fi
		echo
		echo "Made by \`scripts/bench.sh --sections $section ${args[*]}\` on $(date -u +%Y-%m-%d) ($(nproc) host CPUs, KVM: $kvm),"
		echo "lithe $(git rev-parse --short HEAD), Cloud Hypervisor: $ch."
		if [ "$section" = netscale ]; then
			echo "lithe boots guest-images/out/vmlinux and initramfs with boot=1,max=4, 256 MiB and a virtio-net device on a TAP"
			echo "in a network namespace the bench makes and removes (\`lithe_net=\` on the command line runs the guest's net-up)."
			echo "No other VMM publishes this figure; absolute rates on this machine swing from day to day."
		else
			echo "Every VMM boots the same guest-images/out/vmlinux, initramfs and command line with boot=1 and 256 MiB,"
			echo "one VM at a time, alternating which goes first. Absolute times on this machine swing ~2.5x from day"
			echo "to day: compare the ratios, which come from one run."
		fi
		echo
		if [ "$section" = net ]; then
			echo "Each VM has one vCPU and a virtio-net device on a TAP (\`bnet0\`) in a network namespace the bench makes and"
			echo "removes; \`lithe_net=\` on the command line runs the guest's net-up, which starts its TCP echo service on port 7."
			echo "lithe's device is virtio-mmio, Cloud Hypervisor's virtio-pci (its command line drops \`pci=off\`). Cloud Hypervisor"
			echo "sets the TAP's address itself (\`ip=\`, \`mask=\`); for lithe the bench gives it with ip(8). From inside the"
			echo "namespace the bench sends 4 MiB through each connection and reads the echo back, every byte checked: one"
			echo "connection, then four at once. VMM CPU is every VMM thread but the vCPU threads (/proc schedstat), per MB."
			echo "QEMU runs as in the hotplug section plus \`-netdev tap,id=n0,ifname=bnet0,script=no,downscript=no -device"
			echo "virtio-net-pci,netdev=n0,mac=02:4c:00:00:00:80\` (userspace virtio-net, as lithe's and Cloud Hypervisor's are),"
			echo "without \`pci=off\`; the bench gives the TAP its address with ip(8)."
			echo
		fi
		if [ "$section" = fs ]; then
			echo "Each run starts a fresh virtiofsd (Debian's /usr/lib/qemu/virtiofsd, \`-o cache=none\`, the same binary and"
			echo "flags for both VMMs) sharing a folder with one 64 MiB file of pseudo-random bytes. Each VM has one vCPU,"
			echo "\`--memory size=256M,shared=on\`, \`--fs tag=bench,socket=…,num_queues=1,queue_size=1024\`, hybrid vsock and"
			echo "\`lithe_bench=io\`; the guest's iobench mounts the share and reads the file in 1 MiB reads, timed in the guest."
			echo "lithe's device is virtio-mmio, Cloud Hypervisor's virtio-pci. VMM CPU is every VMM thread but the vCPU threads"
			echo "(/proc schedstat) around the read, per MiB; virtiofsd's CPU is counted for none."
			echo "QEMU runs as in the hotplug section with \`-object memory-backend-memfd,id=ram,size=256M,share=on -machine"
			echo "memory-backend=ram\`, \`-chardev socket,id=fs0,path=… -device vhost-user-fs-pci,chardev=fs0,tag=bench,queue-size=1024\`"
			echo "and its vsock as in the io section (the vsock backend's CPU counted as QEMU's)."
			echo
		fi
		if [ "$section" = hotplug ]; then
			echo "QEMU ($(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo absent)) runs with the same kernel,"
			echo "initramfs, command line and memory: \`-M q35,accel=kvm -cpu host -smp 1,maxcpus=MAX -m 256M -nodefaults"
			echo "-no-user-config -display none -name bench,debug-threads=on -serial file:… -kernel … -initrd … -append … -qmp unix:…\` ($(
				[ -d /sys/module/kvm_pvm ] && echo "here \`-cpu host,arch-capabilities=off\`: QEMU's write of that MSR fails under kvm_pvm" ||
					echo "hardware KVM"
			)). q35, because QEMU 7.2's microvm has no CPU hotplug. vCPUs are added with QMP \`device_add\` of the"
			echo "free slots \`query-hotpluggable-cpus\` lists and removed with \`device_del\`; QEMU's own done signals"
			echo "(ACPI_DEVICE_OST, DEVICE_DELETED) are rows of their own, and the guest's report is the figure compared."
			echo
		fi
		if [ "$section" = mem ]; then
			echo "Each VM has one vCPU and \`--memory size=256M,hotplug_size=512M\` (the same flags for both VMMs; ACPI hotplug,"
			echo "Cloud Hypervisor's default). The bench asks for \`desired_ram\` 768 MiB, then 256 MiB, over the API. The guest's"
			echo "init prints MemTotal whenever memory blocks come or go (their uevents; the kernel onlines new blocks movable,"
			echo "\`memhp_default_state=online_movable\`); each time is from the API call to that report. \"API to VMM reports 256 MiB\""
			echo "is until \`vm.info\`'s memory.size says so, which lithe changes once the guest has ejected the memory. QEMU runs"
			echo "as in the hotplug section with \`-m 256M,slots=4,maxmem=768M\`; the bench adds a 512 MiB \`pc-dimm\` on a"
			echo "\`memory-backend-ram\` over QMP and removes it with \`device_del\`; its \"VMM reports\" is \`query-memory-size-summary\`."
			echo
		fi
		if [ "$section" = io ]; then
			echo "Each VM has one vCPU, a fresh copy of the same 256 MiB raw image of pseudo-random bytes"
			echo "(\`--disk path=…,image_type=raw\`, defaults otherwise), hybrid vsock (\`--vsock cid=3,socket=…\`), and"
			echo "\`lithe_bench=io\` on its command line, which starts the guest's /bin/iobench (guest-images/iobench.c)."
			echo "lithe's devices are virtio-mmio (\`pci=off\`), Cloud Hypervisor's virtio-pci: the kernel has both"
			echo "transports, and Cloud Hypervisor's command line drops \`pci=off\`. The guest times the disk phases"
			echo "(O_DIRECT on /dev/vda: 64 MiB in 1 MiB requests; 4 KiB random reads over the whole disk, QD16 as 16"
			echo "processes); the bench times 64 MiB sent into the guest over vsock. VMM CPU is the CPU time of every"
			echo "VMM thread but the vCPU threads (/proc schedstat), per request."
			echo "QEMU runs as in the hotplug section (without \`pci=off\`) with \`-drive file=…,format=raw,if=none,id=disk0,"
			echo "cache=writeback,aio=threads -device virtio-blk-pci,drive=disk0\` (buffered, as the other two: their defaults)."
			echo "QEMU's own vsock is vhost-vsock, in the host kernel; for the same hybrid vsock it gets rust-vmm's"
			echo "vhost-device-vsock ($(target/bench-tools/bin/vhost-device-vsock --version 2>/dev/null || echo absent); \`--guest-cid 3 --socket … --uds-path …\`) through"
			echo "\`-chardev socket,id=vsock0,path=… -device vhost-user-vsock-pci,chardev=vsock0\`, which needs the guest's memory"
			echo "shared: \`-object memory-backend-memfd,id=ram,size=256M,share=on -machine memory-backend=ram\`. That backend is"
			echo "QEMU's vsock data path, so its CPU is counted as QEMU's."
			echo
		fi
		cat "$table"
	} > "$page"
	echo "wrote $page"
done
