//! The hotplug section: per VMM, per `max`, per run, boot to the guest's
//! first report; hot-add 1→3, API call to the guest's report; hot-remove
//! 3→1, API call to the guest's report and to the vCPU threads gone; idle
//! CPU over 10 s; VMM RSS with 1 and with 3 vCPUs; MMIO exits per guest
//! scan (lithe's counters).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::vm::{cpu_ticks, rss_kib, scratch, vcpu_threads, Setup, Vm, Vmm};
use crate::Samples;

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const STEP_LIMIT: Duration = Duration::from_secs(180);
/// How long after the guest offlined the CPUs the threads get to go away.
const JOIN_LIMIT: Duration = Duration::from_secs(20);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

pub const FIGURES: [&str; 13] = [
    "boot to first report (s)",
    "hot-add 1→3, API to guest report (s)",
    "hot-add 1→3, API to QEMU's last ACPI_DEVICE_OST (s)",
    "hot-remove 3→1, API to guest report (s)",
    "hot-remove 3→1, API to threads joined (s)",
    "hot-remove 3→1, API to QEMU's last DEVICE_DELETED (s)",
    "idle CPU, % of one core",
    "VMM RSS, 1 vCPU (MiB)",
    "VMM RSS, 3 vCPUs (MiB)",
    "MMIO exits per guest scan",
    "lithe's share: start to first KVM_RUN (ms)",
    "lithe's share: API to GED interrupt, add (ms)",
    "lithe's share: _EJ0 to thread joined (ms)",
];

fn report(online: &str) -> String {
    format!("LITHE-GUEST online={online} ")
}

fn hotplug_counters(vm: &Vm) -> Option<(u64, u64)> {
    let v = vm.counters()?;
    let h = &v["cpu-hotplug"];
    Some((h["reads"].as_u64()? + h["writes"].as_u64()?, h["scans"].as_u64()?))
}

/// lithe's own share, as it counts it (`vm.counters`' `vmm` block), in ms.
fn vmm_share(vm: &Vm, name: &str) -> Option<f64> {
    let ns = vm.counters()?["vmm"][name].as_u64()?;
    (ns > 0).then_some(ns as f64 / 1e6)
}

/// When QEMU sent the `count`th event `name` after `since` (wall clock),
/// from `since`, by QEMU's own timestamp on the event: ACPI_DEVICE_OST with
/// status 0 (the guest's `_OST` success), and DEVICE_DELETED for a device
/// with an id (not its child objects).
fn qemu_event(vm: &Vm, name: &str, count: usize, since: SystemTime) -> Option<Duration> {
    let q = vm.qmp.as_ref()?;
    let start = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let mut seen = q.events.iter().filter_map(|e| {
        let ts = &e["timestamp"];
        let at = ts["seconds"].as_f64()? + ts["microseconds"].as_f64()? / 1e6;
        let wanted = e["event"] == name
            && (name != "ACPI_DEVICE_OST" || e["data"]["info"]["status"] == 0)
            && (name != "DEVICE_DELETED" || e["data"]["device"].is_string());
        (wanted && at >= start).then(|| Duration::from_secs_f64(at - start))
    });
    seen.nth(count - 1)
}

/// One VMM, one `max`: boot, idle, add, remove; the figures it measured.
pub fn run(setup: &Setup, vmm: Vmm, max: u32, out: &mut Samples, notes: &mut Vec<String>) -> Result<(), String> {
    let dir = scratch(&format!("{}-{max}", vmm.name()))?;
    let mut vm = Vm::launch(setup, vmm, &dir, max, &setup.cmdline, &[])?;
    let pid = vm.pid;
    let mut put = |what: &'static str, v: f64| out.entry((what, max, vmm)).or_default().push(v);
    let mut pos = vm.wait_serial(0, &report("0"), BOOT_LIMIT)?;
    put("boot to first report (s)", vm.started.elapsed().as_secs_f64());
    if let Some(ms) = vmm_share(&vm, "start_to_first_kvm_run_ns") {
        put("lithe's share: start to first KVM_RUN (ms)", ms);
    }

    std::thread::sleep(Duration::from_secs(2));
    let hz = 100.0; // USER_HZ
    let t0 = cpu_ticks(pid).ok_or("no /proc stat")?;
    std::thread::sleep(IDLE_WINDOW);
    let t1 = cpu_ticks(pid).ok_or("no /proc stat")?;
    put("idle CPU, % of one core", (t1 - t0) as f64 / hz / IDLE_WINDOW.as_secs_f64() * 100.0);
    put("VMM RSS, 1 vCPU (MiB)", rss_kib(pid).unwrap_or(0.0) / 1024.0);

    let before = hotplug_counters(&vm);
    let (t, wall) = (Instant::now(), SystemTime::now());
    vm.set_vcpus(3)?;
    pos = vm.wait_serial(pos, &report("0-2"), STEP_LIMIT)?;
    put("hot-add 1→3, API to guest report (s)", t.elapsed().as_secs_f64());
    if let Some(q) = vm.qmp.as_mut() {
        q.poll_events(Duration::from_millis(100));
        match qemu_event(&vm, "ACPI_DEVICE_OST", 2, wall) {
            Some(d) => put("hot-add 1→3, API to QEMU's last ACPI_DEVICE_OST (s)", d.as_secs_f64()),
            None => notes.push(format!("QEMU max={max}: no two successful ACPI_DEVICE_OST events for the add")),
        }
    }
    if let Some(ms) = vmm_share(&vm, "last_add_api_to_ged_ns") {
        put("lithe's share: API to GED interrupt, add (ms)", ms);
    }
    std::thread::sleep(Duration::from_secs(1));
    put("VMM RSS, 3 vCPUs (MiB)", rss_kib(pid).unwrap_or(0.0) / 1024.0);
    if let (Some((a0, s0)), Some((a1, s1))) = (before, hotplug_counters(&vm)) {
        if s1 > s0 {
            put("MMIO exits per guest scan", (a1 - a0) as f64 / (s1 - s0) as f64);
        }
    }

    let (t, wall) = (Instant::now(), SystemTime::now());
    vm.set_vcpus(1)?;
    // The guest's report and the threads' end, each timed from the call:
    // lithe joins a thread at the guest's _EJ0, which can come before the
    // guest prints its report.
    let (mut reported, mut joined) = (None, None);
    let deadline = t + STEP_LIMIT;
    let needle = report("0");
    while (reported.is_none() || joined.is_none()) && Instant::now() < deadline {
        if reported.is_none() {
            let text = std::fs::read(&vm.serial).unwrap_or_default();
            if text.len() > pos && String::from_utf8_lossy(&text[pos..]).contains(&needle) {
                reported = Some(t.elapsed());
            }
        }
        if joined.is_none() && vcpu_threads(pid) <= 1 {
            joined = Some(t.elapsed());
        }
        if let Some(q) = vm.qmp.as_mut() {
            q.poll_events(Duration::from_millis(1));
        }
        // Give a VMM that never retires its threads a bounded chance.
        if reported.is_some_and(|r| t.elapsed() > r + JOIN_LIMIT) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let reported = reported.ok_or("the guest never reported online=0")?;
    if vm.qmp.is_some() {
        match qemu_event(&vm, "DEVICE_DELETED", 2, wall) {
            Some(d) => put("hot-remove 3→1, API to QEMU's last DEVICE_DELETED (s)", d.as_secs_f64()),
            None => notes.push(format!("QEMU max={max}: no two DEVICE_DELETED events for the removal")),
        }
    }
    put("hot-remove 3→1, API to guest report (s)", reported.as_secs_f64());
    match joined {
        Some(j) => {
            put("hot-remove 3→1, API to threads joined (s)", j.as_secs_f64());
            if let Some(ms) = vmm_share(&vm, "last_eject_to_joined_ns") {
                put("lithe's share: _EJ0 to thread joined (ms)", ms);
            }
        }
        None => notes.push(format!(
            "{} max={max}: {} vCPU threads still there {JOIN_LIMIT:?} after the guest offlined the CPUs",
            vmm.name(),
            vcpu_threads(pid)
        )),
    }
    Ok(())
}
