//! The API socket. Each connection gets a thread of its own (up to
//! [`MAX_CONNECTIONS`]), so a slow or hostile client only ever holds its own
//! thread: `vm.info` and `vm.resize` from anyone else are served at once,
//! and a resize that waits for the guest blocks nobody. The accept loop never
//! reads from a client. Connections persist (as Cloud Hypervisor's server
//! keeps them) and pipelined requests are answered in order; each request
//! has one deadline for all of its bytes.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use vmm::rpc::{ActionError, VmmAction, VmmData};

use crate::http::{read_request, write_response, HttpError};
use crate::routes::{failure, respond as reply_for, route};
use crate::types::ApiResponse;

/// Connections served at once; one more is answered 429 (retry) and closed.
pub const MAX_CONNECTIONS: usize = 128;
/// All of a request's bytes, from its first, must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A kept-alive connection may sit idle between requests this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read its response loses the connection after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a server going away waits for answers still being written.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);
const MAX_DRAIN: usize = 1 << 20;

/// What the VMM does with an action. Called on worker threads.
pub trait ApiHandler: Send + Sync {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError>;
}

/// The VMM's own dispatcher: queries on this thread, commands on its main loop.
impl ApiHandler for vmm::api_bridge::ApiBridge {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        vmm::api_bridge::ApiBridge::handle(self, action)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("API socket {path}: another process is listening on it")]
    InUse { path: PathBuf },
    #[error("API socket {path}: exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("API socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("API server thread: {0}")]
    ThreadInit(String),
}

/// Runs first on the server's thread, before it accepts anything. Threads
/// the server starts later (its workers) inherit what it set up: lithe
/// installs its API seccomp filter here.
pub type ThreadInit = Box<dyn FnOnce() -> Result<(), String> + Send>;

pub struct ApiServer {
    path: PathBuf,
    /// Requests read and not yet answered: the server, when dropped, gives
    /// them a moment to be written (the answer to `vmm.shutdown` is written
    /// after the VMM decided to exit).
    inflight: Arc<AtomicUsize>,
    /// The socket file this server bound (device, inode): on exit it removes
    /// the path only if it is still that file, not one a later lithe bound.
    bound: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Removes a socket file left behind by a VMM that is gone.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ServerError::Io { path: path.into(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket { path: path.into() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse { path: path.into() }),
        Err(_) => {
            info!("replacing stale API socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ServerError::Io { path: path.into(), source })
        }
    }
}

impl ApiServer {
    /// Binds `path` (mode 0600) and serves it on a thread named `api`.
    pub fn start(path: &Path, handler: Arc<dyn ApiHandler>) -> Result<ApiServer, ServerError> {
        Self::start_with(path, handler, None)
    }

    /// As [`ApiServer::start`], running `init` on the server thread first;
    /// returns its error (and serves nothing) if it fails.
    pub fn start_with(
        path: &Path,
        handler: Arc<dyn ApiHandler>,
        init: Option<ThreadInit>,
    ) -> Result<ApiServer, ServerError> {
        clear_stale(path)?;
        // SAFETY: umask only changes this process's file-creation mask; we
        // restore it right after bind, before other threads create files.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|source| ServerError::Io { path: path.into(), source })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| ServerError::Io { path: path.into(), source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let inflight = Arc::new(AtomicUsize::new(0));
        let inflight_c = inflight.clone();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let initialised = init.map_or(Ok(()), |init| init());
                let ok = initialised.is_ok();
                let _ = ready_tx.send(initialised);
                if ok {
                    accept_loop(listener, handler, s, inflight_c);
                }
            })
            .map_err(|source| ServerError::Io { path: path.into(), source })?;
        let initialised = ready.recv().unwrap_or_else(|_| Err("the thread ended before it started serving".into()));
        if let Err(e) = initialised {
            let _ = std::fs::remove_file(path);
            return Err(ServerError::ThreadInit(e));
        }
        info!("API listening on {}", path.display());
        let bound = file_id(path);
        Ok(ApiServer { path: path.into(), inflight, bound, stop, thread: Some(thread) })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_ON_EXIT;
        while self.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept so the thread sees the flag. It is not
        // joined: a worker may be waiting out a resize, and the process is
        // about to exit anyway.
        let _ = UnixStream::connect(&self.path);
        drop(self.thread.take());
        if self.bound.is_some() && file_id(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn ApiHandler>,
    stop: Arc<AtomicBool>,
    inflight: Arc<AtomicUsize>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("API: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            // Never block here: a non-blocking answer, then close. What the
            // client already sent is drained first (without waiting for
            // more), since closing on unread bytes resets the connection,
            // and a client may then lose the answer.
            let _ = stream.set_nonblocking(true);
            let busy = ApiResponse::error(429, ["Too Many Requests", "too many open API connections; retry"]);
            let _ = write_response(&mut stream, busy.status, busy.body.as_ref(), false);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                    break;
                }
            }
            continue;
        }
        let (handler, active_c, inflight) = (handler.clone(), active.clone(), inflight.clone());
        // Threads started here inherit the server thread's seccomp filter.
        let spawned = std::thread::Builder::new().name("api-conn".into()).spawn(move || {
            serve_connection(stream, handler.as_ref(), &inflight);
            active_c.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            warn!("API: cannot start a connection thread: {e}");
        }
    }
}

/// Most file descriptors one request may carry (`vm.add-net`: a TAP per
/// queue pair); more make the read fail, and the kernel's copies are closed.
pub const MAX_FDS: usize = 8;

/// File descriptors that came with a request's bytes (`SCM_RIGHTS`). They
/// close when dropped: on every error path, and for every endpoint but the
/// one that takes them.
#[derive(Default)]
pub struct ReceivedFds(pub Vec<OwnedFd>);

/// Reads bytes, and any file descriptors sent with them.
fn recv(stream: &UnixStream, buf: &mut [u8], fds: &mut ReceivedFds) -> std::io::Result<usize> {
    let mut raw = [-1; MAX_FDS];
    let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
    // SAFETY: the one iovec covers `buf`, writable for its whole length.
    let (n, count) = unsafe { stream.recv_with_fds(&mut iov, &mut raw) }.map_err(|e| match e.errno() {
        // The kernel had more fds than room: it (or vmm-sys-util) closed them.
        libc::ENOBUFS => std::io::Error::new(ErrorKind::InvalidInput, format!("more than {MAX_FDS} file descriptors")),
        errno => std::io::Error::from_raw_os_error(errno),
    })?;
    for &fd in &raw[..count] {
        // SAFETY: the kernel just installed `fd` for this process; nothing
        // else knows of it, so this is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if fds.0.len() < MAX_FDS {
            fds.0.push(owned);
        } else {
            return Err(std::io::Error::new(ErrorKind::InvalidInput, format!("more than {MAX_FDS} file descriptors")));
        }
    }
    Ok(n)
}

/// Reads with one deadline for a whole request, keeping the fds it brings.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    fds: &'a mut ReceivedFds,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "request deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        recv(self.stream, buf, self.fds)
    }
}

/// Runs the handler, turning a panic into a 500: the connection, the server
/// and whatever the handler guards stay usable.
fn dispatch(handler: &dyn ApiHandler, action: VmmAction) -> ApiResponse {
    let failure = failure(&action);
    let describe = format!("{action:?}");
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(action))) {
        Ok(result) => reply_for(failure, result),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("API: handler panicked on {describe}: {what}");
            ApiResponse::error(500, [failure.to_string(), format!("internal error (handler panicked: {what})")])
        }
    }
}

/// Counts a request from when it was read until its answer is written.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_connection(mut stream: UnixStream, handler: &dyn ApiHandler, inflight: &AtomicUsize) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = Vec::new();
    loop {
        let mut fds = ReceivedFds::default();
        // Wait (up to the idle timeout) for the first byte of a request;
        // from then on the request deadline counts.
        if buf.is_empty() {
            let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
            let mut first = [0u8; 4096];
            match recv(&stream, &mut first, &mut fds) {
                Ok(0) => return,
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    let r = ApiResponse::error(400, ["Bad Request".to_string(), e.to_string()]);
                    let _ = write_response(&mut stream, r.status, r.body.as_ref(), false);
                    close_gracefully(&mut stream);
                    return;
                }
                Err(_) => return,
                Ok(n) => buf.extend_from_slice(&first[..n]),
            }
        }
        let mut reader = DeadlineReader { stream: &stream, deadline: Instant::now() + REQUEST_DEADLINE, fds: &mut fds };
        let mut writer = &stream;
        let mut interim = || writer.write_all(b"HTTP/1.1 100 \r\n\r\n");
        let request = read_request(&mut reader, &mut buf, &mut interim);
        let _answering = InFlight::new(inflight);
        let (response, keep_alive) = match request {
            Ok(req) => {
                debug!("API: {} {}", req.method, req.path);
                let response = match route(&req, fds.0) {
                    Ok(action) => dispatch(handler, action),
                    Err(reply) => reply,
                };
                (response, req.keep_alive)
            }
            Err(HttpError::Closed) => return,
            Err(e) => {
                let status = e.status();
                let reason = if status == 408 { "Request Timeout" } else { "Bad Request" };
                (ApiResponse::error(status, [reason.to_string(), e.to_string()]), false)
            }
        };
        if response.status >= 400 {
            debug!("API: answering {} {:?}", response.status, response.body);
        }
        if write_response(&mut stream, response.status, response.body.as_ref(), keep_alive).is_err() {
            return;
        }
        if !keep_alive {
            close_gracefully(&mut stream);
            return;
        }
    }
}

/// Closes after the last response: reads and drops a bounded amount first,
/// since closing with unread input (say, the rest of an oversized body)
/// makes the kernel reset the connection and the client may lose our reply.
fn close_gracefully(stream: &mut UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(DRAIN_TIMEOUT));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}
