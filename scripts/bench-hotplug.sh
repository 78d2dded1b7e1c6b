#!/usr/bin/env bash
# Hotplug latency benchmark (a scripted run, not a test): boots the guest
# image with --cpus boot=1,max=M for each M, resizes 1 -> 3 -> 1, and prints
#   boot        lithe start -> the guest's first "LITHE-GUEST online" line
#   add->online resize call -> the guest reports online=0-2
#   rm->retired resize call (with wait) -> both vCPUs ejected, threads joined
# Usage: scripts/bench-hotplug.sh [MAX ...]   (default: 4 32 64)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(guest-images/build.sh)
cargo build --release --quiet --bin lithe
maxes=("$@")
[ ${#maxes[@]} -gt 0 ] || maxes=(4 32 64)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
wait_line() { # file pattern timeout_s
	local deadline=$(( $(date +%s) + $3 ))
	until grep -q -- "$2" "$1"; do
		[ "$(date +%s)" -lt $deadline ] || { echo "timed out waiting for '$2'" >&2; tail -20 "$1" >&2; return 1; }
		sleep 0.05
	done
}
resize() { curl -sf --unix-socket "$1" -X PUT http://localhost/api/v1/vm.resize -d "$2" >/dev/null; }

printf '%-6s %10s %14s %14s\n' max boot_s add_online_s rm_retired_s
for max in "${maxes[@]}"; do
	sock=$work/api-$max.sock con=$work/console-$max log=$work/log-$max
	t0=$(now)
	target/release/lithe --kernel "$out/vmlinux" --initramfs "$out/initramfs.cpio" \
		--cmdline "$(cat guest-images/cmdline)" --cpus boot=1,max="$max" --memory size=256M \
		--api-socket "$sock" >"$con" 2>"$log" </dev/null &
	pid=$!
	wait_line "$con" "LITHE-GUEST online=0 present=0" 600
	boot=$(since "$t0")
	t1=$(now)
	resize "$sock" '{"desired_vcpus":3}'
	wait_line "$con" "LITHE-GUEST online=0-2 present=0-2" 300
	add=$(since "$t1")
	t2=$(now)
	resize "$sock" '{"desired_vcpus":1,"wait_ms":300000}'
	rm=$(since "$t2")
	grep -q "vCPU 1: retired" "$log" && grep -q "vCPU 2: retired" "$log" || { echo "vCPUs not retired" >&2; exit 1; }
	printf '%-6s %10.1f %14.2f %14.2f\n' "$max" "$boot" "$add" "$rm"
	curl -sf --unix-socket "$sock" -X PUT http://localhost/api/v1/vmm.shutdown || true
	wait $pid || true
done
