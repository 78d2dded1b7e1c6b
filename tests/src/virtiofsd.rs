//! A real virtio-fs backend for the tests: an unmodified virtiofsd sharing a
//! directory the test made, on a socket in it. Debian's
//! `qemu-system-common` ships it as `/usr/lib/qemu/virtiofsd`; the Rust
//! virtiofsd (`/usr/libexec/virtiofsd`, or `$LITHE_VIRTIOFSD`) takes the
//! same flags used here. A missing one fails the test under CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a virtiofsd may be, first found wins.
const CANDIDATES: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/bin/virtiofsd"];

/// The virtiofsd binary, or `None` after [`prereq::missing`].
pub fn binary(test: &str) -> Option<PathBuf> {
    let from_env = std::env::var_os("LITHE_VIRTIOFSD").map(PathBuf::from);
    let found = from_env.into_iter().chain(CANDIDATES.iter().map(PathBuf::from)).find(|p| p.is_file());
    if found.is_none() {
        prereq::missing(
            test,
            "virtiofsd (Debian: qemu-system-common, /usr/lib/qemu/virtiofsd; scripts/deps.sh installs it)",
        );
    }
    found
}

/// A running virtiofsd; killed when dropped.
pub struct Virtiofsd {
    child: Child,
    pub socket: PathBuf,
    pub shared: PathBuf,
    pub log: PathBuf,
}

impl Virtiofsd {
    /// Shares `shared` on `dir/virtiofsd.sock`; returns once the socket is there.
    pub fn start(test: &str, dir: &Path, shared: &Path) -> Option<Virtiofsd> {
        let bin = binary(test)?;
        let socket = dir.join("virtiofsd.sock");
        let log = dir.join("virtiofsd.log");
        let child = Command::new(&bin)
            .arg(format!("--socket-path={}", socket.display()))
            .args(["-o", &format!("source={}", shared.display()), "-o", "cache=none"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut d = Virtiofsd { child, socket, shared: shared.to_path_buf(), log };
        let t0 = Instant::now();
        while !d.socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("virtiofsd exited ({status}) before listening: {}", d.log_text());
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "virtiofsd did not listen: {}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(d)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the backend (SIGKILL): the session's socket closes under lithe.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// FNV-1a, 32 bits: what the guest's `fs-read` reports for a file.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(16_777_619))
}
