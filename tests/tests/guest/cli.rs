//! The lithe binary's command line and process behaviour, without a guest.

use std::process::Command;
use std::time::Duration;

use tests::{lithe_bin, Guest, GuestImage, Launch};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(lithe_bin()).args(args).output().expect("run lithe");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    let image = GuestImage::locate();
    let k = image.kernel.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--kernel", k, "--cpus", "boot=0,max=2"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=3,max=2"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=1,max=5000"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=two"], "--cpus"),
        (&["--kernel", k, "--memory", "size=lots"], "--memory"),
        (&["--kernel", k, "--memory", "size=1M"], "--memory"),
        (&["--kernel", k, "--serial", "pty"], "--serial"),
        (&["--kernel", "/nonexistent/vmlinux"], "--kernel"),
        (&["--kernel", k, "--initramfs", "/nonexistent.cpio"], "--initramfs"),
        (&["--kernel", k, "--disk", "path=/nonexistent.raw"], "--disk"),
        (&["--kernel", k, "--disk", "readonly=on"], "--disk"),
        (&["--kernel", k, "--vsock", "cid=2,socket=/tmp/lithe-test.vsock"], "--vsock"),
        (&["--kernel", k, "--rng", "src=/nonexistent-rng"], "--rng"),
        (&["--kernel", k, "--memory", "size=256M,shared=on", "--fs", "tag=t,socket=/nonexistent.sock"], "--fs"),
        (&["--kernel", k, "--fs", "tag=t,socket=/tmp"], "--fs"),
        (&["--kernel", k, "--fs", "tag=0123456789012345678901234567890123456,socket=/s"], "--fs"),
        (&["--kernel", k, "--fs", "socket=/s,queue_size=1000"], "--fs"),
        (&[], "--kernel"),
    ];
    for (args, flag) in cases {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line expected, got:\n{err}");
        assert!(err.contains(flag), "{args:?}: {err:?} does not name {flag}");
    }
    // clap's own errors (unknown flags) also exit 2.
    assert_eq!(run(&["--bogus"]).0, 2);
    let (code, err) = run(&["--seccomp", "maybe"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--seccomp"), "{err}");
}

#[test]
fn sigterm_stops_lithe_cleanly_and_removes_the_socket() {
    let mut g = Guest::launch(Launch { cpus: "", with_kernel: false, ..Launch::default() });
    assert!(g.socket.exists());
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(g.child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(g.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(!g.socket.exists(), "socket removed on SIGTERM");
}

#[test]
fn seccomp_off_leaves_the_api_threads_unfiltered_and_says_so() {
    let g = Guest::launch(Launch { args: &["--seccomp", "off"], ..Launch::default() });
    g.wait_log("seccomp filters are off", Duration::from_secs(5));
    let modes = g.thread_seccomp_modes();
    assert!(modes.iter().any(|(n, _)| n == "api"), "{modes:?}");
    assert!(modes.iter().all(|(_, mode)| *mode == 0), "{modes:?}");
}

/// Started with stdin closed (not /dev/null: no fd 0 at all), lithe has fd
/// 0 on /dev/null (Rust's runtime reopens closed standard fds before
/// `main`), so no file of its own (the log, /dev/kvm, an event fd) becomes
/// "stdin" for the console to read, and the main loop does not spin on it.
#[test]
fn a_closed_stdin_is_reopened_as_dev_null_and_costs_no_cpu() {
    use std::os::unix::process::CommandExt;

    /// Kills lithe if an assertion fails first.
    struct Reaper(std::process::Child);
    impl Drop for Reaper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = std::env::temp_dir().join(format!("lithe-closed-stdin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let mut cmd = Command::new(lithe_bin());
    cmd.arg("--api-socket").arg(&socket).arg("--log-file").arg(dir.join("lithe.log"));
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: close(2) is async-signal-safe; the child closes its own fd 0
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let mut lithe = Reaper(cmd.spawn().unwrap());
    let pid = lithe.0.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while api::client::request(&socket, "GET", "vmm.ping", None, Duration::from_secs(5)).map(|r| r.status).ok()
        != Some(200)
    {
        assert!(std::time::Instant::now() < deadline, "lithe does not serve");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));

    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<u64> =
            stat.rsplit_once(')').unwrap().1.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
        f[0] + f[1]
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    // In clock ticks (100 a second): a spinning loop would use ~200.
    assert!(cpu() - before < 40, "lithe used {} ticks in 2 s with stdin closed", cpu() - before);

    let _ = api::client::request(&socket, "PUT", "vmm.shutdown", None, Duration::from_secs(10));
    assert_eq!(lithe.0.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
