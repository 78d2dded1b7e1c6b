#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each (default
# 60), starting from its committed seeds (fuzz/seeds/<target>) in a scratch
# corpus, so runs do not grow the repository. Installs nightly and
# cargo-fuzz if they are missing. Prints each target's executions; a crash
# fails the script and leaves its input in fuzz/artifacts/<target>/.
# --dev builds the targets unoptimized: for a smoke run of a few seconds the
# build is most of the time (docs/testing.md has the figures); long runs
# want the optimized build's speed.
#   scripts/fuzz.sh [--dev] [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=()
if [ "${1:-}" = --dev ]; then
	profile=(--dev)
	shift
fi
secs=${1:-60}
shift || true
case $secs in
'' | *[!0-9]* | 0)
	echo "fuzz.sh: SECONDS must be a positive whole number, got '$secs' (usage: scripts/fuzz.sh [--dev] [SECONDS] [TARGET...])" >&2
	exit 2
	;;
esac
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
known=$(cargo +nightly fuzz list)
for t in "$@"; do
	grep -qx -- "$t" <<<"$known" || {
		echo "fuzz.sh: no fuzz target '$t' (targets: $(echo $known))" >&2
		exit 2
	}
done
targets=${*:-$known}
for t in $targets; do
	work=$(mktemp -d)
	cp -r "seeds/$t/." "$work/" 2>/dev/null || true
	log=$(mktemp)
	echo "==> fuzz $t for ${secs}s"
	if ! cargo +nightly fuzz run "${profile[@]}" "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
		tail -40 "$log"
		echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)" >&2
		exit 1
	fi
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
	echo "    $t: $execs executions, no crash"
	rm -rf "$work" "$log"
done
