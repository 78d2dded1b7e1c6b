#!/usr/bin/env bash
# The hotplug soak: N add/remove cycles (default 10000) in the in-process
# test bed (real DSDT AML, controller, GED, manager and KVM vCPUs; model
# guest), checking that open fds, vCPU threads and RSS stay flat. Prints the
# numbers that docs/hotplug.md records. Not a timed test: run by hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LITHE_SOAK_CYCLES=${1:-10000}
cargo test --release -p vmm --test hotplug_bed soak_add_remove_cycles -- --nocapture 2>&1 | grep -E "^soak:|test result"
