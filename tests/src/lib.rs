//! Harness for tests that boot the real guest image under lithe and read
//! what the guest itself prints on its console.
//!
//! The guest's init prints `LITHE-GUEST online=<list> present=<list>
//! apic=<ids>` whenever either set changes (`apic` lists the online CPUs'
//! APIC ids, which are lithe's vCPU ids), and obeys commands typed on the
//! console (`poweroff`, `reboot`, `refuse-eject`, `allow-eject`,
//! `ignore-hotplug`, `allow-hotplug`, `eject-cpu N`, `ping`, `topology`: where
//! Linux placed each online CPU, `attack SEED COUNT [PROTECTED_ID...]`: random
//! accesses to lithe's device registers).
//!
//! Environment: `LITHE_TEST_ECHO=1` echoes the guest's and lithe's lines as
//! they come; `LITHE_TEST_MEMORY` replaces `--memory size=128M` (e.g.
//! `size=128M,thp=off`).

pub mod netns;
pub mod virtiofsd;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Guests boot slowly under a software-nested KVM: budget minutes.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(180);

/// How many guests run at once: `$LITHE_TEST_GUESTS`, default 2 (one guest
/// leaves a core idle while it waits on its own hotplug and reboot steps;
/// docs/testing.md has the measurements).
static GUEST_SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Panics (failing the test that asked, with the reason) on a value that is
/// not a positive number, rather than quietly running two.
fn guest_slots() -> usize {
    match std::env::var("LITHE_TEST_GUESTS") {
        Err(_) => 2,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("LITHE_TEST_GUESTS must be a positive number of guests, got {v:?}"),
        },
    }
}

/// A running guest's claim on one of the slots, given back on drop.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let slots = guest_slots();
        let (lock, cv) = &GUEST_SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= slots {
            used = cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &GUEST_SLOTS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The lithe binary: `$LITHE_BIN`, else the workspace's build of the same
/// profile as these tests (so `cargo test` never picks a stale other one),
/// else the other profile's.
pub fn lithe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LITHE_BIN") {
        return p.into();
    }
    let profiles = if cfg!(debug_assertions) { ["debug", "release"] } else { ["release", "debug"] };
    for profile in profiles {
        let p = workspace().join("target").join(profile).join("lithe");
        if p.exists() {
            return p;
        }
    }
    panic!("lithe binary not found: run `cargo build --release --bin lithe` (scripts/test.sh does) or set LITHE_BIN");
}

/// Kernel, initramfs and cmdline of the guest image (`guest-images/build.sh`).
pub struct GuestImage {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// The same kernel as a bzImage.
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    /// The initramfs's files as an ext4 root disk.
    pub rootfs: PathBuf,
    pub cmdline: String,
}

impl GuestImage {
    pub fn locate() -> GuestImage {
        let dir = std::env::var_os("LITHE_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("guest-images/out"));
        let image = GuestImage {
            kernel: dir.join("vmlinux"),
            bzimage: dir.join("bzImage"),
            initramfs: dir.join("initramfs.cpio"),
            rootfs: dir.join("rootfs.ext4"),
            cmdline: std::fs::read_to_string(workspace().join("guest-images/cmdline"))
                .expect("guest-images/cmdline")
                .trim()
                .to_string(),
        };
        assert!(
            image.kernel.exists() && image.bzimage.exists() && image.initramfs.exists() && image.rootfs.exists(),
            "guest image missing in {}: run guest-images/build.sh (scripts/test.sh does)",
            dir.display()
        );
        image
    }
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

fn pump(stream: impl Read + Send + 'static, sink: Shared, echo: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r').to_string();
            if std::env::var_os("LITHE_TEST_ECHO").is_some() {
                eprintln!("{echo} {line}");
            }
            let (m, cv) = &*sink;
            m.lock().unwrap().lines.push(line);
            cv.notify_all();
        }
        let (m, cv) = &*sink;
        m.lock().unwrap().closed = true;
        cv.notify_all();
    });
}

/// The online/present sets the guest reported last, and the APIC ids of
/// its online CPUs (Linux's logical CPU numbers are not vCPU ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuReport {
    pub online: String,
    pub present: String,
    pub apic: String,
}

pub fn parse_report(line: &str) -> Option<CpuReport> {
    let rest = line.split("LITHE-GUEST online=").nth(1)?;
    let (online, rest) = rest.split_once(" present=")?;
    let (present, apic) = rest.split_once(" apic=").unwrap_or((rest, ""));
    Some(CpuReport { online: online.trim().into(), present: present.trim().into(), apic: apic.trim().into() })
}

/// A running lithe with a booting or booted guest.
pub struct Guest {
    pub child: Child,
    stdin: Option<ChildStdin>,
    console: Shared,
    log: Shared,
    pub socket: PathBuf,
    _dir: PathBuf,
    _slot: Slot,
}

#[derive(Default)]
pub struct Launch<'a> {
    pub cpus: &'a str,
    /// Boot from flags; false: only `--api-socket` (configure over the API).
    pub with_kernel: bool,
    /// Boot the bzImage instead of the ELF vmlinux.
    pub bzimage: bool,
    /// More command-line arguments for lithe.
    pub args: &'a [&'a str],
    /// Appended to the guest image's kernel command line.
    pub extra_cmdline: &'a str,
    /// Boot without the initramfs (from a disk given in `args`).
    pub no_initramfs: bool,
    /// Run lithe inside this network namespace (`ip netns exec`, which
    /// execs lithe in place: the child is lithe itself).
    pub netns: Option<&'a str>,
    /// `--memory`'s value instead of the default (`LITHE_TEST_MEMORY`, else 128M).
    pub memory: Option<&'a str>,
}

impl Guest {
    pub fn launch(opts: Launch<'_>) -> Guest {
        let slot = Slot::take();
        let image = GuestImage::locate();
        let dir = std::env::temp_dir().join(format!("lithe-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let mut cmd = match opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(lithe_bin());
                c
            }
            None => Command::new(lithe_bin()),
        };
        cmd.arg("--api-socket").arg(&socket);
        if opts.with_kernel {
            let kernel = if opts.bzimage { &image.bzimage } else { &image.kernel };
            cmd.arg("--kernel").arg(kernel);
            if !opts.no_initramfs {
                cmd.arg("--initramfs").arg(&image.initramfs);
            }
            let cmdline = format!("{} {}", image.cmdline.trim(), opts.extra_cmdline);
            cmd.arg("--cmdline").arg(cmdline.trim()).arg("--cpus").arg(opts.cpus).arg("--memory").arg(
                match opts.memory {
                    Some(m) => m.to_string(),
                    None => std::env::var("LITHE_TEST_MEMORY").unwrap_or_else(|_| "size=128M".into()),
                },
            );
        }
        cmd.args(opts.args);
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn lithe");
        let console: Shared = Default::default();
        let log: Shared = Default::default();
        pump(child.stdout.take().unwrap(), console.clone(), "[guest]");
        pump(child.stderr.take().unwrap(), log.clone(), "[lithe]");
        let stdin = child.stdin.take();
        let g = Guest { child, stdin, console, log, socket, _dir: dir, _slot: slot };
        g.wait_for(&g.log, "API listening", Duration::from_secs(30));
        g
    }

    fn wait_for(&self, which: &Shared, needle: &str, timeout: Duration) -> String {
        self.wait_until(which, timeout, needle, |l| l.contains(needle))
    }

    fn wait_until(&self, which: &Shared, timeout: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        self.wait_lines(which, timeout, what, |lines| lines.iter().find(|l| f(l)).cloned())
    }

    /// Waits until `check` finds what it wants in all lines so far.
    fn wait_lines(
        &self,
        which: &Shared,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[String]) -> Option<String>,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &**which;
        let mut out = m.lock().unwrap();
        loop {
            if let Some(found) = check(&out.lines) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || out.closed {
                drop(out);
                panic!(
                    "timed out or exited waiting for {what}\n--- guest console (tail) ---\n{}\n--- lithe log (tail) ---\n{}",
                    self.tail(&self.console, 40),
                    self.tail(&self.log, 40)
                );
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    fn tail(&self, which: &Shared, n: usize) -> String {
        let out = which.0.lock().unwrap_or_else(|e| e.into_inner());
        out.lines[out.lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a console line containing `needle`.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(&self.console, needle, timeout)
    }

    /// Waits for a lithe log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(&self.log, needle, timeout)
    }

    /// lithe's log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.0.lock().unwrap().lines.iter().any(|l| l.contains(needle))
    }

    /// The guest's latest CPU report.
    pub fn last_report(&self) -> Option<CpuReport> {
        self.console.0.lock().unwrap().lines.iter().rev().find_map(|l| parse_report(l))
    }

    /// Waits until the guest's latest report says exactly `online` and `present`.
    pub fn wait_cpus(&self, online: &str, present: &str, timeout: Duration) {
        let what = format!("the guest to report online={online} present={present} (last: {:?})", self.last_report());
        self.wait_lines(&self.console, timeout, &what, |lines| {
            let last = lines.iter().rev().find_map(|l| parse_report(l))?;
            (last.online == online && last.present == present).then(String::new)
        });
    }

    /// Waits until the guest's latest report says it runs on exactly the
    /// vCPUs `ids` (by APIC id, in any order).
    pub fn wait_apic(&self, ids: &[u32], timeout: Duration) {
        let mut want: Vec<u32> = ids.to_vec();
        want.sort_unstable();
        let what = format!("the guest to run on vCPUs {want:?} (last: {:?})", self.last_report());
        self.wait_lines(&self.console, timeout, &what, |lines| {
            let last = lines.iter().rev().find_map(|l| parse_report(l))?;
            let mut have: Vec<u32> = last.apic.split(',').filter_map(|a| a.trim().parse().ok()).collect();
            have.sort_unstable();
            (have == want).then(String::new)
        });
    }

    /// Lines the console printed so far.
    pub fn console_lines(&self) -> usize {
        self.console.0.lock().unwrap().lines.len()
    }

    /// The console lines printed after line `from`.
    pub fn console_since(&self, from: usize) -> Vec<String> {
        self.console.0.lock().unwrap().lines.iter().skip(from).cloned().collect()
    }

    /// Waits for a console line containing `needle` printed after line `from`.
    pub fn wait_console_after(&self, from: usize, needle: &str, timeout: Duration) -> String {
        self.wait_lines(&self.console, timeout, needle, |lines| {
            lines.iter().skip(from).find(|l| l.contains(needle)).cloned()
        })
    }

    /// Types a line on the guest console.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to lithe stdin");
        stdin.flush().unwrap();
    }

    /// One API call; `body` is sent as is (may be invalid on purpose).
    /// How many kernel log records so far contain `pattern` (the guest's
    /// /dev/kmsg: after boot only warnings reach the console).
    pub fn kmsg_count(&mut self, pattern: &str) -> u64 {
        let from = self.console_lines();
        self.send(&format!("kmsg-count {pattern}"));
        let line = self.wait_console_after(from, "LITHE-GUEST kmsg-count=", Duration::from_secs(120));
        line.rsplit('=').next().and_then(|n| n.trim().parse().ok()).expect("a count")
    }

    pub fn api_raw(&self, method: &str, endpoint: &str, body: &str) -> (u16, serde_json::Value) {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(&self.socket).expect("connect API socket");
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let req = format!(
            "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code");
        let json = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).expect("JSON body")
        };
        (status, json)
    }

    pub fn api(&self, method: &str, endpoint: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        self.api_raw(method, endpoint, &body)
    }

    /// Resize and wait for the guest; returns the reply body.
    pub fn resize(&self, n: u32) -> serde_json::Value {
        self.resize_waiting(serde_json::json!({ "desired_vcpus": n }))
    }

    /// Targeted resize (lithe's `desired_vcpu_ids`) and wait for the guest;
    /// returns the reply body.
    pub fn resize_ids(&self, ids: &[u32]) -> serde_json::Value {
        self.resize_waiting(serde_json::json!({ "desired_vcpu_ids": ids }))
    }

    /// `vm.resize` with `body` plus a wait; asserts a 200.
    fn resize_waiting(&self, mut body: serde_json::Value) -> serde_json::Value {
        body["wait_ms"] = serde_json::json!(HOTPLUG_TIMEOUT.as_millis() as u64);
        let (status, reply) = self.api("PUT", "vm.resize", body.clone());
        assert_eq!(status, 200, "resize {body}: {reply}");
        reply
    }

    /// Names of lithe's `vcpu<N>` threads, sorted.
    pub fn vcpu_threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("lithe is running")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .filter(|c| c.starts_with("vcpu"))
            .collect();
        names.sort();
        names
    }

    /// Closes lithe's stdin, as a controlling terminal or parent going away would.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// CPU time (user + system) lithe's main thread has used so far.
    pub fn main_thread_cpu(&self) -> Duration {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")).expect("lithe is running");
        // Fields after the `(comm)`, which may hold spaces: state is field 3,
        // utime and stime are fields 14 and 15, in clock ticks.
        let rest = stat.rsplit_once(')').expect("stat has (comm)").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_sec)
    }

    /// Each of lithe's threads, by name, with its seccomp mode from
    /// `/proc` (0: none, 2: filtered), sorted by name.
    pub fn thread_seccomp_modes(&self) -> Vec<(String, u32)> {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut modes: Vec<(String, u32)> = std::fs::read_dir(dir)
            .expect("lithe is running")
            .filter_map(|t| {
                let path = t.ok()?.path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_string();
                let status = std::fs::read_to_string(path.join("status")).ok()?;
                let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?.trim().parse().ok()?;
                Some((name, mode))
            })
            .collect();
        modes.sort();
        modes
    }

    /// Waits until lithe has exactly the `vcpu<N>` threads for `ids`.
    pub fn wait_vcpu_threads(&self, ids: &[u32], timeout: Duration) {
        let mut want: Vec<String> = ids.iter().map(|i| format!("vcpu{i}")).collect();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.vcpu_threads();
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vCPU threads {have:?}, expected {want:?}\n{}",
                self.tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "lithe did not exit\n{}", self.tail(&self.log, 30));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failed assertion says what it compared, not what led there: the
        // tails of both streams go with it (wait timeouts print them already).
        if std::thread::panicking() {
            eprintln!(
                "--- guest console (tail) ---\n{}\n--- lithe log (tail) ---\n{}",
                self.tail(&self.console, 60),
                self.tail(&self.log, 60)
            );
        }
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// The guest init's disk pattern (init.c, `pattern_byte`): byte `i` of a
/// `disk-write SEED …`.
pub fn disk_pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((seed + i * 131 + (i >> 9) * 17) % 251) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_reports() {
        assert_eq!(
            parse_report("LITHE-GUEST online=0-1,3 present=0-3 apic=0,2,3"),
            Some(CpuReport { online: "0-1,3".into(), present: "0-3".into(), apic: "0,2,3".into() })
        );
        assert_eq!(
            parse_report("[  1.0] LITHE-GUEST online=0 present=0\r"),
            Some(CpuReport { online: "0".into(), present: "0".into(), apic: "".into() })
        );
        assert_eq!(parse_report("LITHE-GUEST ready"), None);
    }
}
