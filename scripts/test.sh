#!/usr/bin/env bash
# lithe's full test run: formatting, lints, unit and guest-booting tests,
# loom models, Miri and a short run of every fuzz target. Installs what it needs (scripts/deps.sh) and builds
# the guest image first (incremental).
# LITHE_REQUIRE_MIRI=1 makes a missing Miri an error instead of a loud skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s (at %d s)\n' "$*" "$SECONDS"; }

step "dependencies (Debian packages, Rust components)"
scripts/deps.sh

step "guest image"
guest-images/build.sh >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build lithe"
cargo build --release --bin lithe

step "unit, stress and guest tests"
cargo test --workspace --release

step "loom models of the vCPU table"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p vmm --release --test loom_vcpu_table

step "Miri on the vCPU table"
if cargo +nightly miri --version >/dev/null 2>&1; then
	MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p vmm --lib cpu::
	MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p vmm --test vcpu_table_stress
elif [ "${LITHE_REQUIRE_MIRI:-0}" = 1 ]; then
	echo "Miri is required but not installed (rustup component add --toolchain nightly miri)" >&2
	exit 1
else
	echo "!!! SKIPPED: Miri is not installed (rustup component add --toolchain nightly miri) !!!" >&2
fi
step "fuzz targets, briefly (a broken target fails here; long runs: scripts/fuzz.sh 600)"
scripts/fuzz.sh "${LITHE_FUZZ_SECONDS:-15}"

step "all passed"
