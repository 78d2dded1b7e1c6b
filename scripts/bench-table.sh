#!/usr/bin/env bash
# Runs the vCPU table benchmark and prints its results as the markdown tables
# in docs/vcpu-table.md. Needs a quiet machine: nothing else running.
#   scripts/bench-table.sh            run, then print
#   scripts/bench-table.sh --print    print the last run's results only
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--print" ]]; then
    cargo bench -p vmm --bench vcpu_table >&2
fi

python3 - <<'PY'
import json, pathlib

root = pathlib.Path("target/criterion")
subjects = [
    ("vcpu-table-membarrier-global", "table, global membarrier"),
    ("vcpu-table-membarrier-expedited", "table, expedited membarrier"),
    ("vcpu-table-seqcst", "table, SeqCst fence"),
    ("mutex-vec", "Mutex<Vec>"),
    ("rwlock-vec", "RwLock<Vec>"),
]
sizes = [1, 8, 64, 254, 1024]

def median(group, subject, n):
    f = root / group / subject / str(n) / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["median"]["point_estimate"]

for op, what in [("walk", "enter, walk every present vCPU, leave"), ("lookup", "enter, look up one vCPU, leave")]:
    for churn in ["uncontended", "paced-churn", "tight-churn"]:
        group = f"{op}-{churn}"
        present = [(k, label) for k, label in subjects if (root / group / k).exists()]
        if not present:
            continue
        print(f"**{group}** (ns per section: {what}; criterion's median)\n")
        print("| vCPUs | " + " | ".join(l for _, l in present) + " | Mutex ÷ table (default) |")
        print("|---:|" + "---:|" * (len(present) + 1))
        for n in sizes:
            vals = [median(group, k, n) for k, _ in present]
            default, mutex = vals[0], median(group, "mutex-vec", n)
            ratio = f"{mutex / default:.1f}×" if default and mutex else "–"
            cells = [f"{v:.1f}" if v is not None else "–" for v in vals]
            print(f"| {n} | " + " | ".join(cells) + f" | {ratio} |")
        print()
PY
