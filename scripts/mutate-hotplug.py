#!/usr/bin/env python3
"""Mutation check of the hotplug protocol's tests: puts back, one at a time,
the behaviour each fix of the hotplug-protocol issue replaced, and runs the
in-process bed test that pins it down. Every line must say FAILS. Restores
each file afterwards; builds in target/mutants.
  scripts/mutate-hotplug.py          the full pass (minutes: one build per mutation)
  scripts/mutate-hotplug.py --check  only that every mutation's anchor text is in
                                     its file once and its test exists (instant;
                                     scripts/test.sh runs it, so the pass cannot rot)"""
import subprocess, os, re, sys
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
M = [
 ("case 1: a removal of a never-acknowledged vCPU rolls back to adding (limbo)", 'vmm/vcpu-table/src/lifecycle.rs',
  "        (Removing, E::EjectTimedOut) if s.from == Adding => State::with(Ejected, Reason::AddTimeout),\n", "",
  "an_add_the_guest_takes_and_ignores_and_an_ignored_eject_after_it"),
 ("case 1b: removal never takes a pending insert back", 'vmm/src/cpu/manager.rs',
  "            && self.controller.withdraw_insert(id)\n            && self.apply(id, Event::AddWithdrawn).is_some()", "            && false",
  "add_then_remove_before_the_guest_scans"),
 ("case 2: no bound on a hot-add", 'vmm/src/cpu/manager.rs',
  "        self.apply(id, Event::Add);\n        self.deadlines[id as usize] = Some(self.clock.now() + self.timeout);", "        self.apply(id, Event::Add);",
  "failed_and_unanswered_adds_are_retired_and_the_target_follows"),
 ("case 4: an eject the VMM did not ask for is ignored", 'vmm/vcpu-table/src/lifecycle.rs',
  "        (Adding | Acknowledged | Running, E::Ejected) => State::with(Ejected, Reason::EjectedByGuest),\n", "",
  "a_guest_initiated_eject_retires_and_lowers_the_target"),
 ("case 3: a late _EJ0 after the timeout is ignored", 'vmm/vcpu-table/src/lifecycle.rs',
  "        (Adding | Acknowledged | Running, E::Ejected) => State::with(Ejected, Reason::EjectedByGuest),\n", "",
  "a_late_eject_after_the_timeout_retires"),
 ("case 7: deadlines run on while paused", 'vmm/src/cpu/manager.rs',
  "            for d in self.deadlines.iter_mut().flatten() {\n                *d += paused_for;\n            }", "            let _ = paused_for;",
  "deadlines_stop_while_paused"),
 ("case 7b: a failed pause leaves the others paused", 'vmm/src/cpu/manager.rs',
  "                for h in &handles[..=i] {\n                    h.resume();\n                }", "                let _ = i;",
  "a_failed_pause_leaves_every_vcpu_running"),
 ("case 8: a part-way add failure does not tell the guest", 'vmm/src/cpu/manager.rs',
  "                    spawned.push((id, ready));\n                    notify = true;", "                    spawned.push((id, ready));\n                    notify = step.add.len() == plan.added.len();",
  "an_add_that_fails_part_way_keeps_and_announces_the_rest"),
 ("case 9: a thread that does not stop is detached", 'vmm/src/cpu/manager.rs',
  "                self.stuck.push((id, handle));", "                drop(handle);",
  "a_thread_that_does_not_stop_is_stuck_not_lost"),
 ("case 10: parked vCPUs are not reset (MP state)", 'vmm/src/cpu/manager.rs',
  "        fd.set_mp_state(mp).map_err(|source| ManagerError::Reset { id, source })", "        let _ = mp;\n        Ok(())",
  "parked_vcpus_are_reused"),
 ("case 11: acknowledged counts as running", 'vmm/vcpu-table/src/lifecycle.rs',
  "        (Adding, E::AddAcked) => State::new(Acknowledged),", "        (Adding, E::AddAcked) => State::new(Running),",
  "a_guest_that_acknowledges_but_never_starts_the_cpu"),
 ("case 12: removals are never taken back", 'vmm/src/cpu/manager.rs',
  "            if !self.controller.withdraw_remove(id) {", "            if true {",
  "retarget_while_removals_are_pending"),
]
BED = 'vmm/tests/hotplug_bed.rs'
if sys.argv[1:] == ['--check']:
    tests = set(re.findall(r'^fn (\w+)\(', open(BED).read(), re.M))
    bad = []
    for name, path, old, new, test in M:
        n = open(path).read().count(old)
        if n != 1:
            bad.append(f"{name}: its anchor is in {path} {n} times, not once")
        if test not in tests:
            bad.append(f"{name}: {BED} has no test {test}")
    for b in bad:
        print(f"mutate-hotplug --check: {b}", file=sys.stderr)
    print(f"mutate-hotplug --check: {len(M) - len(bad)} of {len(M)} mutations apply")
    raise SystemExit(1 if bad else 0)
if sys.argv[1:]:
    raise SystemExit("usage: scripts/mutate-hotplug.py [--check]")
env = dict(os.environ, CARGO_TARGET_DIR=os.path.abspath('target/mutants'))
survivors = 0
for name, path, old, new, test in M:
    src = open(path).read()
    assert old in src, name
    open(path, 'w').write(src.replace(old, new, 1))
    try:
        r = subprocess.run(['cargo', 'test', '--release', '-p', 'vmm', '--test', 'hotplug_bed', test, '--', '--exact'],
                           env=env, capture_output=True, text=True, timeout=900)
        out = r.stdout + r.stderr
        verdict = 'FAILS (good)' if 'test result: FAILED' in out else ('passes (BAD)' if 'test result: ok. 1 passed' in out else 'build error?')
    finally:
        open(path, 'w').write(src)
    survivors += verdict != 'FAILS (good)'
    print(f"{name}: {test} {verdict}", flush=True)
raise SystemExit(1 if survivors else 0)
