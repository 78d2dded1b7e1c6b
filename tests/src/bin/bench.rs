//! Side-by-side benchmark: lithe and (when `../shared/peers/cloud-hypervisor`
//! is there) Cloud Hypervisor on the same kernel, initramfs and command line,
//! alternating in one run. Run it through `scripts/bench.sh`; it prints a
//! Markdown table (and writes it to `--out FILE`).
//!
//! Per VMM, per `max`, per run: boot to the guest's first report; hot-add
//! 1→3, API call to the guest's report; hot-remove 3→1, API call to the
//! guest's report and to the vCPU threads gone; idle CPU over 10 s; VMM RSS
//! with 1 and with 3 vCPUs; MMIO exits per guest scan (lithe's counters).
//! A figure a VMM cannot give is "n/a" with the reason in the notes.
//!
//! Not a test: absolute times on this machine swing from day to day, so
//! only the ratios within one run mean anything.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const STEP_LIMIT: Duration = Duration::from_secs(180);
/// How long after the guest offlined the CPUs the threads get to go away.
const JOIN_LIMIT: Duration = Duration::from_secs(20);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Vmm {
    Lithe,
    CloudHypervisor,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Lithe => "lithe",
            Vmm::CloudHypervisor => "CH",
        }
    }
}

/// One figure's samples, by VMM.
type Samples = BTreeMap<(&'static str, u32, Vmm), Vec<f64>>;

struct Setup {
    lithe: PathBuf,
    ch: Option<PathBuf>,
    kernel: PathBuf,
    initramfs: PathBuf,
    cmdline: String,
}

fn http(socket: &Path, method: &str, endpoint: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // Read the head, then exactly Content-Length bytes (Cloud Hypervisor's
    // server keeps the connection open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= len {
                let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((status, rest[..len].to_string()));
            }
        }
    }
    Err(format!("{endpoint}: connection closed early"))
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn vcpu_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_start().starts_with("vcpu"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the serial file has, after byte `from`, a report line with
/// `online=<want> `; returns where the file ended.
fn wait_report(serial: &Path, from: usize, want: &str, limit: Duration, child: &mut Child) -> Result<usize, String> {
    let deadline = Instant::now() + limit;
    let needle = format!("LITHE-GUEST online={want} ");
    loop {
        let text = std::fs::read(serial).unwrap_or_default();
        if text.len() > from && String::from_utf8_lossy(&text[from..]).contains(&needle) {
            return Ok(text.len());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the VMM exited ({status}) before the guest reported online={want}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no report online={want} within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn all_counters(socket: &Path) -> Option<serde_json::Value> {
    let (status, body) = http(socket, "GET", "vm.counters", "").ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

fn counters(socket: &Path) -> Option<(u64, u64)> {
    let v = all_counters(socket)?;
    let h = &v["cpu-hotplug"];
    Some((h["reads"].as_u64()? + h["writes"].as_u64()?, h["scans"].as_u64()?))
}

/// lithe's own share, as it counts it (`vm.counters`' `vmm` block), in ms.
fn vmm_share(socket: &Path, name: &str) -> Option<f64> {
    let ns = all_counters(socket)?["vmm"][name].as_u64()?;
    (ns > 0).then_some(ns as f64 / 1e6)
}

/// One VMM, one `max`: boot, idle, add, remove; the figures it measured.
fn run_once(setup: &Setup, vmm: Vmm, max: u32, out: &mut Samples, notes: &mut Vec<String>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("lithe-bench-{}-{}-{max}", std::process::id(), vmm.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (socket, serial) = (dir.join("api.sock"), dir.join("serial.log"));
    let bin = match vmm {
        Vmm::Lithe => setup.lithe.clone(),
        Vmm::CloudHypervisor => setup.ch.clone().ok_or("no Cloud Hypervisor")?,
    };
    let start = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--kernel")
        .arg(&setup.kernel)
        .arg("--initramfs")
        .arg(&setup.initramfs)
        .arg("--cmdline")
        .arg(&setup.cmdline)
        .arg("--cpus")
        .arg(format!("boot=1,max={max}"))
        .arg("--memory")
        .arg("size=256M")
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--console")
        .arg("off")
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("vmm.log")).map_err(|e| e.to_string())?))
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = child.id();
    let result = (|| -> Result<(), String> {
        let mut put = |what: &'static str, v: f64| out.entry((what, max, vmm)).or_default().push(v);
        let mut pos = wait_report(&serial, 0, "0", BOOT_LIMIT, &mut child)?;
        put("boot to first report (s)", start.elapsed().as_secs_f64());
        if let Some(ms) = vmm_share(&socket, "start_to_first_kvm_run_ns") {
            put("lithe's share: start to first KVM_RUN (ms)", ms);
        }

        std::thread::sleep(Duration::from_secs(2));
        let hz = 100.0; // USER_HZ
        let t0 = cpu_ticks(pid).ok_or("no /proc stat")?;
        std::thread::sleep(IDLE_WINDOW);
        let t1 = cpu_ticks(pid).ok_or("no /proc stat")?;
        put("idle CPU, % of one core", (t1 - t0) as f64 / hz / IDLE_WINDOW.as_secs_f64() * 100.0);
        put("VMM RSS, 1 vCPU (MiB)", rss_kib(pid).unwrap_or(0.0) / 1024.0);

        let before = counters(&socket);
        let t = Instant::now();
        let (s, b) = http(&socket, "PUT", "vm.resize", r#"{"desired_vcpus":3}"#)?;
        if s >= 300 {
            return Err(format!("resize to 3: {s} {b}"));
        }
        pos = wait_report(&serial, pos, "0-2", STEP_LIMIT, &mut child)?;
        put("hot-add 1→3, API to guest report (s)", t.elapsed().as_secs_f64());
        if let Some(ms) = vmm_share(&socket, "last_add_api_to_ged_ns") {
            put("lithe's share: API to GED interrupt, add (ms)", ms);
        }
        std::thread::sleep(Duration::from_secs(1));
        put("VMM RSS, 3 vCPUs (MiB)", rss_kib(pid).unwrap_or(0.0) / 1024.0);
        if let (Some((a0, s0)), Some((a1, s1))) = (before, counters(&socket)) {
            if s1 > s0 {
                put("MMIO exits per guest scan", (a1 - a0) as f64 / (s1 - s0) as f64);
            }
        }

        let t = Instant::now();
        let (s, b) = http(&socket, "PUT", "vm.resize", r#"{"desired_vcpus":1}"#)?;
        if s >= 300 {
            return Err(format!("resize to 1: {s} {b}"));
        }
        // The guest's report and the threads' end, each timed from the call:
        // lithe joins a thread at the guest's _EJ0, which can come before the
        // guest prints its report.
        let (mut reported, mut joined) = (None, None);
        let deadline = t + STEP_LIMIT;
        let needle = "LITHE-GUEST online=0 ";
        while (reported.is_none() || joined.is_none()) && Instant::now() < deadline {
            if reported.is_none() {
                let text = std::fs::read(&serial).unwrap_or_default();
                if text.len() > pos && String::from_utf8_lossy(&text[pos..]).contains(needle) {
                    reported = Some(t.elapsed());
                }
            }
            if joined.is_none() && vcpu_threads(pid) <= 1 {
                joined = Some(t.elapsed());
            }
            // Give a VMM that never retires its threads a bounded chance.
            if reported.is_some_and(|r| t.elapsed() > r + JOIN_LIMIT) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reported = reported.ok_or("the guest never reported online=0")?;
        put("hot-remove 3→1, API to guest report (s)", reported.as_secs_f64());
        match joined {
            Some(j) => {
                put("hot-remove 3→1, API to threads joined (s)", j.as_secs_f64());
                if let Some(ms) = vmm_share(&socket, "last_eject_to_joined_ns") {
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
    })();
    let _ = http(&socket, "PUT", "vmm.shutdown", "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Some((mean, lo, hi))
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v.and_then(|v| stats(v).map(|s| (s, v.len()))) {
        Some(((mean, lo, hi), n)) if n > 1 => format!("{mean:.2} ({lo:.2}–{hi:.2}, n={n})"),
        Some(((mean, _, _), n)) => format!("{mean:.2} (n={n})"),
        None => "n/a".into(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(2);
    let maxes: Vec<u32> =
        arg("--max").unwrap_or_else(|| "4,32,64".into()).split(',').filter_map(|m| m.parse().ok()).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let images = root.join("guest-images/out");
    let ch = root.join("../shared/peers/cloud-hypervisor");
    let setup = Setup {
        lithe: root.join("target/release/lithe"),
        ch: ch.exists().then_some(ch),
        kernel: images.join("vmlinux"),
        initramfs: images.join("initramfs.cpio"),
        cmdline: std::fs::read_to_string(root.join("guest-images/cmdline")).unwrap_or_default().trim().to_string(),
    };
    let mut vmms = vec![Vmm::Lithe];
    if setup.ch.is_some() {
        vmms.push(Vmm::CloudHypervisor);
    } else {
        eprintln!("bench: ../shared/peers/cloud-hypervisor is missing; lithe only");
    }
    let mut samples = Samples::new();
    let mut notes = Vec::new();
    for max in &maxes {
        for run in 0..runs {
            // Alternate which VMM goes first, so a drift in the machine's
            // speed does not favour one.
            let mut order = vmms.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for vmm in order {
                eprintln!("bench: {} max={max} run {}/{runs}", vmm.name(), run + 1);
                if let Err(e) = run_once(&setup, vmm, *max, &mut samples, &mut notes) {
                    eprintln!("bench: {} max={max}: {e}", vmm.name());
                    notes.push(format!("{} max={max} run {}: {e}", vmm.name(), run + 1));
                }
            }
        }
    }

    let figures = [
        "boot to first report (s)",
        "hot-add 1→3, API to guest report (s)",
        "hot-remove 3→1, API to guest report (s)",
        "hot-remove 3→1, API to threads joined (s)",
        "idle CPU, % of one core",
        "VMM RSS, 1 vCPU (MiB)",
        "VMM RSS, 3 vCPUs (MiB)",
        "MMIO exits per guest scan",
        "lithe's share: start to first KVM_RUN (ms)",
        "lithe's share: API to GED interrupt, add (ms)",
        "lithe's share: _EJ0 to thread joined (ms)",
    ];
    let mut md = String::new();
    md.push_str("| max | figure | lithe | Cloud Hypervisor | lithe/CH |\n|---|---|---|---|---|\n");
    for max in &maxes {
        for f in &figures {
            let l = samples.get(&(f, *max, Vmm::Lithe));
            let c = samples.get(&(f, *max, Vmm::CloudHypervisor));
            let ratio = match (l.and_then(|v| stats(v)), c.and_then(|v| stats(v))) {
                (Some((a, _, _)), Some((b, _, _))) if b > 0.0 => format!("{:.2}", a / b),
                _ => "n/a".into(),
            };
            md.push_str(&format!("| {max} | {f} | {} | {} | {ratio} |\n", cell(l), cell(c)));
        }
    }
    md.push_str("\nMean (min–max, n = runs). ");
    md.push_str("n/a: the VMM does not give the figure (Cloud Hypervisor has no per-scan counters, and does not retire ejected vCPU threads), or every run failed (notes).\n");
    if !notes.is_empty() {
        md.push_str("\nNotes:\n");
        for n in &notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    print!("{md}");
    if let Some(path) = arg("--out") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("bench: writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
