//! The API socket: accepts connections, one request each, served by a small
//! pool of worker threads (a resize that waits for the guest must not block
//! `vm.info`).

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};

use crate::action::{ActionError, VmmAction, VmmData};
use crate::http::{read_request, write_response};
use crate::routes::{respond as reply_for, route};
use crate::types::ApiResponse;

/// Requests served at once, and queued beyond that; more get 429 (retry).
pub const WORKERS: usize = 4;
pub const MAX_QUEUED: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
const MAX_DRAIN: usize = 1 << 20;

/// What the VMM does with an action. Called on worker threads.
pub trait ApiHandler: Send + Sync {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError>;
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
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let initialised = init.map_or(Ok(()), |init| init());
                let ok = initialised.is_ok();
                let _ = ready_tx.send(initialised);
                if ok {
                    accept_loop(listener, handler, s);
                }
            })
            .map_err(|source| ServerError::Io { path: path.into(), source })?;
        let initialised = ready.recv().unwrap_or_else(|_| Err("the thread ended before it started serving".into()));
        if let Err(e) = initialised {
            let _ = std::fs::remove_file(path);
            return Err(ServerError::ThreadInit(e));
        }
        info!("API listening on {}", path.display());
        Ok(ApiServer { path: path.into(), stop, thread: Some(thread) })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept so the thread sees the flag. It is not
        // joined: a worker may be waiting out a resize, and the process is
        // about to exit anyway.
        let _ = UnixStream::connect(&self.path);
        drop(self.thread.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, handler: Arc<dyn ApiHandler>, stop: Arc<AtomicBool>) {
    // A fixed pool: workers live as long as the server, so per-thread state
    // (such as a registered vCPU-table reader) is set up once, not per request.
    let (tx, rx) = std::sync::mpsc::sync_channel::<UnixStream>(MAX_QUEUED);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let (rx, handler) = (rx.clone(), handler.clone());
        let spawned = std::thread::Builder::new().name(format!("api-worker{i}")).spawn(move || loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            match next {
                Ok(mut stream) => serve(&mut stream, handler.as_ref()),
                Err(_) => break,
            }
        });
        match spawned {
            Ok(t) => workers.push(t),
            Err(e) => warn!("API: cannot spawn worker {i}: {e}"),
        }
    }
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("API: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(std::sync::mpsc::TrySendError::Full(mut stream)) = tx.try_send(stream) {
            // Read the request (briefly) before refusing it, so the client
            // sees our 429 rather than a broken pipe. 429 is what Cloud
            // Hypervisor's clients (Kata's driver) retry on.
            let _ = stream.set_read_timeout(Some(DRAIN_TIMEOUT));
            let _ = read_request(&mut stream);
            respond(&mut stream, ApiResponse::error(429, ["Too Many Requests", "the API is busy; retry"]));
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
}

fn serve(stream: &mut UnixStream, handler: &dyn ApiHandler) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let response = match read_request(stream) {
        Ok(req) => {
            debug!("API: {} {}", req.method, req.path);
            match route(&req) {
                Ok(action) => {
                    let failure = action.failure();
                    reply_for(failure, handler.handle(action))
                }
                Err(reply) => reply,
            }
        }
        Err(e) => ApiResponse::error(e.status(), ["Bad Request".to_string(), e.to_string()]),
    };
    if response.status >= 400 {
        debug!("API: answering {} {:?}", response.status, response.body);
    }
    respond(stream, response);
}

/// Writes the response, then closes gracefully.
fn respond(stream: &mut UnixStream, response: ApiResponse) {
    if let Err(e) = write_response(stream, response.status, response.body.as_ref()) {
        debug!("API: writing the response failed: {e}");
    }
    // Closing with unread input (say, the rest of an oversized body) makes
    // the kernel reset the connection, and the client may lose our reply:
    // read and drop a bounded amount first.
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
