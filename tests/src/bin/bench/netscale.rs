//! Throughput follows the vCPUs: a guest serving TCP (its echo service on
//! port 7) to parallel clients, request after request, while lithe resizes
//! it 1 → 4 → 1. Per second: completed requests; per phase: the steady rate
//! and the time from the resize call to the first second at the new rate.
//! lithe only: no other VMM publishes the figure. Everything runs in a
//! network namespace the bench makes and removes (tests::netns).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::netns::Netns;

use crate::vm::{scratch, Setup, Vm, Vmm};

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const CLIENTS: usize = 8;
const REQUEST: &[u8; 64] = &[0x5a; 64];
const GUEST: &str = "10.79.0.2";
/// Seconds per phase: 1 vCPU, then 4, then 1 again.
const PHASE_SECS: u64 = 40;

pub struct Report {
    pub markdown: String,
}

/// Requests completed in each second, and when each resize was called.
struct Series {
    per_second: Vec<u64>,
    resizes: Vec<(u64, u32)>,
}

fn steady(per_second: &[u64], from: usize, to: usize) -> f64 {
    // The phase's second half: after the guest has settled.
    let from = from + (to - from) / 2;
    let s = &per_second[from.min(per_second.len())..to.min(per_second.len())];
    if s.is_empty() {
        0.0
    } else {
        s.iter().sum::<u64>() as f64 / s.len() as f64
    }
}

pub fn run(setup: &Setup) -> Result<Report, String> {
    let ns = Netns::new("bench").ok_or("no network namespace (needs ip(8) and root)")?;
    let dir = scratch("netscale")?;
    let cmdline = format!("{} lithe_net={GUEST}/24", setup.cmdline);
    let extra = ["--net".to_string(), "tap=bench0".to_string()];
    let mut vm = Vm::launch_in(setup, Vmm::Lithe, &dir, 4, &cmdline, &extra, Some(&ns.0))?;
    // The TAP exists once lithe built the VM; the guest's net-up comes later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(dir.join("vmm.log")).map_or(true, |l| !l.contains("virtio-net0: TAP")) {
        if Instant::now() > deadline {
            return Err("lithe did not open its TAP".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.ip(&["addr", "add", "10.79.0.1/24", "dev", "bench0"]);
    ns.ip(&["link", "set", "bench0", "up"]);
    vm.wait_serial(0, "LITHE-GUEST net-up eth0", BOOT_LIMIT)?;
    vm.wait_serial(0, "LITHE-GUEST online=0 ", BOOT_LIMIT)?;

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = ns.connect(format!("{GUEST}:7").parse().unwrap(), Duration::from_secs(60));
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (done, stop) = (done.clone(), stop.clone());
        clients.push(std::thread::spawn(move || -> Result<(), String> {
            let mut back = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(REQUEST).map_err(|e| format!("send: {e}"))?;
                s.read_exact(&mut back).map_err(|e| format!("echo: {e}"))?;
                if &back != REQUEST {
                    return Err("the echo differs from the request".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }

    let mut series = Series { per_second: Vec::new(), resizes: Vec::new() };
    let plan = [(PHASE_SECS, 4u32), (2 * PHASE_SECS, 1u32)];
    let mut last = done.load(Ordering::Relaxed);
    for second in 1..=3 * PHASE_SECS {
        std::thread::sleep(Duration::from_secs(1));
        let now = done.load(Ordering::Relaxed);
        series.per_second.push(now - last);
        last = now;
        if let Some(&(_, n)) = plan.iter().find(|(at, _)| *at == second) {
            let (status, body) = vm.http("PUT", "vm.resize", &format!("{{\"desired_vcpus\":{n}}}"))?;
            if status >= 300 {
                return Err(format!("resize to {n}: {status} {body}"));
            }
            series.resizes.push((second, n));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().map_err(|_| "a client panicked")??;
    }
    let online = vm.counters().map(|c| c["virtio-net0"].clone());
    drop(vm);
    Ok(Report { markdown: markdown(&series, online) })
}

fn markdown(s: &Series, net: Option<serde_json::Value>) -> String {
    let p = PHASE_SECS as usize;
    let rates = [steady(&s.per_second, 0, p), steady(&s.per_second, p, 2 * p), steady(&s.per_second, 2 * p, 3 * p)];
    // From a resize call to the first second from which five seconds run,
    // on average, within 10 % of the new steady rate (a dip while the
    // guest onlines or offlines CPUs is not "arrived").
    let settle = |phase: usize| -> String {
        let new = rates[phase];
        let start = phase * p;
        let end = (start + p).min(s.per_second.len());
        (start..end.saturating_sub(5))
            .position(|i| {
                let mean = s.per_second[i..i + 5].iter().sum::<u64>() as f64 / 5.0;
                (mean - new).abs() <= 0.1 * new
            })
            .map_or("not reached".into(), |i| format!("{} s", i + 1))
    };
    // The slowest second after each resize: what the guest's own CPU
    // onlining or offlining costs the service.
    let dip = |phase: usize| -> u64 {
        let start = phase * p;
        s.per_second[start..(start + 10).min(s.per_second.len())].iter().copied().min().unwrap_or(0)
    };
    let mut md = String::new();
    md.push_str(&format!(
        "{CLIENTS} clients, each sending 64-byte requests to the guest's TCP echo service and waiting for the echo, \
         over virtio-net on a TAP in a network namespace; {PHASE_SECS} s per phase; steady rate = mean of each phase's second half.\n\n"
    ));
    md.push_str(
        "| phase | vCPUs | steady rate (requests/s) | vs 1 vCPU | resize call to the new rate | slowest second in the 10 s after the call |\n|---|---|---|---|---|---|\n",
    );
    md.push_str(&format!("| before | 1 | {:.0} | 1.00 | | |\n", rates[0]));
    for (phase, label, n) in [(1, "after 1 → 4", 4), (2, "after 4 → 1", 1)] {
        md.push_str(&format!(
            "| {label} | {n} | {:.0} | {:.2} | {} | {} |\n",
            rates[phase],
            rates[phase] / rates[0].max(1.0),
            settle(phase),
            dip(phase)
        ));
    }
    md.push_str("\nRequests completed in each second (resizes called at the marked seconds):\n\n```\n");
    for (i, r) in s.per_second.iter().enumerate() {
        let mark = s.resizes.iter().find(|(at, _)| *at as usize == i + 1).map(|(_, n)| format!("  <- resize to {n}"));
        md.push_str(&format!("{:>4} s {r:>6}{}\n", i + 1, mark.unwrap_or_default()));
    }
    md.push_str("```\n");
    if let Some(n) = net {
        md.push_str(&format!("\nThe device's counters at the end: {n}\n"));
    }
    md
}
