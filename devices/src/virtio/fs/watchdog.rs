//! Bounds every exchange with a vhost-user backend. The `vhost` crate's
//! endpoint retries a receive that timed out (`SO_RCVTIMEO` surfaces as a
//! retryable error), so a backend that stops answering would hold the
//! worker thread forever, and with it the VM's teardown. While an exchange
//! is armed, this thread waits for its deadline; past it, it shuts the
//! session's socket down, and the blocked receive returns end-of-file: the
//! exchange fails, the device fails over, nothing waits on the backend.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::virtio::ThreadInit;

#[derive(Default)]
struct State {
    fd: Option<RawFd>,
    deadline: Option<Instant>,
    fired: bool,
    exit: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

pub struct Watchdog {
    shared: Shared,
    limit: Duration,
    thread: Option<JoinHandle<()>>,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchdog {
    /// Starts the thread (`thread_init` first: its seccomp filter).
    pub fn spawn(name: &str, limit: Duration, thread_init: Option<ThreadInit>) -> std::io::Result<Watchdog> {
        let shared: Shared = Arc::default();
        let s = shared.clone();
        let label = name.to_string();
        let thread = std::thread::Builder::new().name(name.chars().take(15).collect()).spawn(move || {
            if let Some(init) = thread_init {
                if let Err(e) = init() {
                    log::error!("{label}: thread setup failed ({e}); backend exchanges are unbounded");
                    return;
                }
            }
            watch(&s, &label)
        })?;
        Ok(Watchdog { shared, limit, thread: Some(thread) })
    }

    /// The socket to shut down when an exchange overruns.
    pub fn set_socket(&self, fd: RawFd) {
        lock(&self.shared).fd = Some(fd);
    }

    /// Forgets the socket (it is about to close).
    pub fn clear_socket(&self) {
        let mut s = lock(&self.shared);
        s.fd = None;
        s.deadline = None;
    }

    /// Runs one exchange with the backend under the deadline.
    pub fn guard<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut s = lock(&self.shared);
            s.deadline = Some(Instant::now() + self.limit);
            self.shared.1.notify_all();
        }
        let r = f();
        lock(&self.shared).deadline = None;
        r
    }

    /// Whether a deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        lock(&self.shared).fired
    }
}

fn watch(shared: &Shared, name: &str) {
    let mut s = lock(shared);
    loop {
        if s.exit {
            return;
        }
        match s.deadline {
            None => s = shared.1.wait(s).unwrap_or_else(|e| e.into_inner()),
            Some(d) if Instant::now() >= d => {
                if let Some(fd) = s.fd {
                    log::error!("{name}: the vhost-user backend did not answer in time; closing the session");
                    // SAFETY: `fd` is the session's socket, open while it is
                    // set here (cleared under this lock before it closes);
                    // shutdown changes no memory.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    s.fired = true;
                }
                s.deadline = None;
            }
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                s = shared.1.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared).exit = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
