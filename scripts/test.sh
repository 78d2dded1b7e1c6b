#!/usr/bin/env bash
# lithe's full test run: formatting, lints, unit and guest-booting tests,
# loom models, Miri and a short run of every fuzz target. Installs what it
# needs (scripts/deps.sh). The guest image (incremental) builds in the
# background while the Rust side is built and checked: both are CPU-bound,
# but each has stretches that leave a core idle (the kernel's link steps;
# cargo's last crates, Miri and the fuzz runs are one thread each).
# LITHE_REQUIRE_MIRI=1 makes a missing Miri an error instead of a loud skip.
# A test whose prerequisite is missing (Cloud Hypervisor's binaries, a kernel
# feature) fails under CI (CI=true) and is a counted, listed skip elsewhere
# (tests/prereq): the last lines say how many tests were skipped and why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s (at %d s)\n' "$*" "$SECONDS"; }

skips=${CARGO_TARGET_DIR:-target}/test-skips
rm -rf "$skips"
mkdir -p "$skips"
# The skips recorded (tests/prereq writes one file per skip; under CI a
# missing prerequisite fails its test instead, so there are none).
report_skips() {
	local n
	n=$(find "$skips" -name '*.txt' 2>/dev/null | wc -l)
	if [ "$n" -gt 0 ]; then
		echo "!!! $n test(s) SKIPPED for a missing prerequisite (counted as passed above):" >&2
		cat "$skips"/*.txt >&2
	else
		echo "skipped for a missing prerequisite: none"
	fi
}

step "dependencies (Debian packages, Rust components)"
scripts/deps.sh

step "guest image, in the background (log: target/guest-image.log)"
mkdir -p target
guest_log=target/guest-image.log
# Its own process group, so an early exit stops make and its compilers too.
setsid guest-images/build.sh >"$guest_log" 2>&1 &
guest_pid=$!
trap 'kill -- -"$guest_pid" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "source checks: no import loops in vmm/src; every hotplug mutation still applies"
scripts/check-imports.py
scripts/mutate-hotplug.py --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build lithe and the tests"
cargo build --release --bin lithe
cargo test --workspace --release --no-run

step "loom models of the vCPU table"
# The table is its own crate (vmm/vcpu-table): --cfg loom rebuilds only it and loom.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p vcpu-table --release --test loom

step "Miri on the vCPU table"
if cargo +nightly miri --version >/dev/null 2>&1; then
	MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p vcpu-table
elif [ "${LITHE_REQUIRE_MIRI:-0}" = 1 ]; then
	echo "Miri is required but not installed (rustup component add --toolchain nightly miri)" >&2
	exit 1
else
	echo "!!! SKIPPED: Miri is not installed (rustup component add --toolchain nightly miri) !!!" >&2
	echo "Miri on the vCPU table: Miri is not installed (rustup component add --toolchain nightly miri)" >"$skips/miri.txt"
fi

step "fuzz targets, briefly (a broken target fails here; long runs: scripts/fuzz.sh 600)"
scripts/fuzz.sh --dev "${LITHE_FUZZ_SECONDS:-5}"

step "guest image (waiting for the background build)"
if ! wait "$guest_pid"; then
	tail -40 "$guest_log" >&2
	echo "guest image build FAILED (whole log: $guest_log)" >&2
	exit 1
fi
trap - EXIT
tail -1 "$guest_log"

step "unit, stress and guest tests"
cargo test --workspace --release

step "all passed"
report_skips
