//! The memory section: per VMM, per run, a 256 MiB guest with 512 MiB of
//! hotplug room grows by 512 MiB (API call to the guest's own `MemTotal`
//! report, which its init prints when memory blocks come or go) and, where
//! the VMM can, shrinks back (API call to the guest's report, and to the
//! VMM saying the memory is gone). lithe and Cloud Hypervisor get
//! `desired_ram`; QEMU a `pc-dimm` added and removed over QMP. Cloud
//! Hypervisor cannot take ACPI hot-plugged memory back; what it answered
//! and what it then reported go in the notes.

use std::time::{Duration, Instant};

use crate::vm::{scratch, Setup, Vm, Vmm};
use crate::Samples;

const BOOT_LIMIT: Duration = Duration::from_secs(400);
/// Removal migrates pages, emulated here: minutes, not seconds.
const STEP_LIMIT: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;
const BOOT: u64 = 256 * MIB;
const GROW: u64 = 512 * MIB;
/// The memory figures are keyed with this `max`.
pub const MEM_KEY: u32 = 1;

pub const FIGURES: [&str; 6] = [
    "grow 256→768 MiB, API to guest MemTotal (s)",
    "shrink 768→256 MiB, API to guest MemTotal (s)",
    "shrink 768→256 MiB, API to VMM reports 256 MiB (s)",
    "lithe's share: API to GED interrupt, grow (ms)",
    "lithe's share: API to GED interrupt, shrink (ms)",
    "lithe's share: _EJ0 to slot unplugged (ms)",
];

/// `MemTotal` reports on the serial console after byte `from`: (kB, end of line).
fn reports(vm: &Vm, from: usize) -> Vec<(u64, usize)> {
    let text = std::fs::read(&vm.serial).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
    let mut out = Vec::new();
    let mut at = from;
    for line in text.split_inclusive('\n') {
        at += line.len();
        if let Some(kb) = line.split("LITHE-GUEST memtotal_kb=").nth(1) {
            if let Ok(kb) = kb.trim().parse() {
                out.push((kb, at));
            }
        }
    }
    out
}

/// Waits for a `MemTotal` report after `from` that satisfies `done`.
fn wait_report(vm: &mut Vm, from: usize, done: impl Fn(u64) -> bool, what: &str) -> Result<(u64, usize), String> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        if let Some(r) = reports(vm, from).into_iter().find(|r| done(r.0)) {
            return Ok(r);
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            return Err(format!("the VMM exited ({status}) waiting for {what}"));
        }
        if Instant::now() > deadline {
            let last = reports(vm, from).last().map(|r| r.0);
            return Err(format!("no {what} within {STEP_LIMIT:?} (last MemTotal report: {last:?} kB)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// lithe's own share (`vm.counters`' `mem-hotplug` block), in ms.
fn share(vm: &Vm, name: &str) -> Option<f64> {
    let ns = vm.counters()?["mem-hotplug"][name].as_u64()?;
    (ns > 0).then_some(ns as f64 / 1e6)
}

/// One VMM, one run: grow, then shrink where the VMM can.
pub fn run(setup: &Setup, vmm: Vmm, out: &mut Samples, notes: &mut Vec<String>) -> Result<(), String> {
    let dir = scratch(&format!("mem-{}", vmm.name()))?;
    let memory = format!("size={}M,hotplug_size={}M", BOOT / MIB, GROW / MIB);
    let mut vm = Vm::launch_with(setup, vmm, &dir, 1, &setup.cmdline, &[], None, &memory)?;
    let mut put = |what: &'static str, v: f64| out.entry((what, MEM_KEY, vmm)).or_default().push(v);
    vm.wait_serial(0, "LITHE-GUEST memtotal_kb=", BOOT_LIMIT)?;
    let (booted_kb, pos) = wait_report(&mut vm, 0, |_| true, "a boot MemTotal report")?;

    let t = Instant::now();
    let (s, b) = vm.set_memory(BOOT + GROW)?;
    if s >= 300 {
        return Err(format!("grow: {s} {b}"));
    }
    let grown = booted_kb + GROW / 1024;
    let (_, pos) = wait_report(&mut vm, pos, |kb| kb >= grown, "MemTotal grown by 512 MiB")?;
    put(FIGURES[0], t.elapsed().as_secs_f64());
    if let Some(ms) = share(&vm, "last_add_api_to_ged_ns") {
        put(FIGURES[3], ms);
    }

    let t = Instant::now();
    let (s, b) = vm.set_memory(BOOT)?;
    if s >= 300 {
        notes.push(format!("{}: shrink to 256 MiB answered {s}: {}", vmm.name(), b.trim()));
        return Ok(());
    }
    let (mut reported, mut gone) = (None, None);
    let deadline = t + STEP_LIMIT;
    while (reported.is_none() || gone.is_none()) && Instant::now() < deadline {
        if reported.is_none() && reports(&vm, pos).iter().any(|r| r.0 <= booted_kb) {
            reported = Some(t.elapsed());
        }
        if gone.is_none() && vm.memory_size() == Some(BOOT) {
            gone = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reported = reported.ok_or_else(|| {
        let last = reports(&vm, 0).last().map(|r| r.0);
        format!(
            "the shrink was answered {s}, but {STEP_LIMIT:?} later the guest's MemTotal was {last:?} kB, not {booted_kb}, while vm.info's memory.size said {:?}",
            vm.memory_size()
        )
    })?;
    put(FIGURES[1], reported.as_secs_f64());
    match gone {
        Some(g) => put(FIGURES[2], g.as_secs_f64()),
        None => notes.push(format!("{}: vm.info did not say 256 MiB within {STEP_LIMIT:?}", vmm.name())),
    }
    if let Some(ms) = share(&vm, "last_remove_api_to_ged_ns") {
        put(FIGURES[4], ms);
    }
    if let Some(ms) = share(&vm, "last_eject_to_unplugged_ns") {
        put(FIGURES[5], ms);
    }
    Ok(())
}
