//! virtio-fs (virtio 1.2, 5.11) through a vhost-user backend: the guest
//! mounts a host directory by its tag; an unmodified virtiofsd serves the
//! FUSE requests straight from the rings in guest memory (which is why
//! `memory.shared` must be on: the backend maps it from lithe's memfd).
//!
//! lithe keeps the transport, the configuration space (tag, request
//! queues) and the interrupt; [`backend`] is the vhost-user session,
//! [`handler`] the worker-thread side, [`fail`] what the guest gets when the
//! backend is gone.

pub mod backend;
pub mod fail;
mod handler;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vm_memory::GuestRegionMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::Worker;
use super::{read_config_bytes, ActivateError, Activation, ThreadInit, VirtioDevice, VIRTIO_F_VERSION_1};
use backend::{Backend, BackendError, REPLY_LIMIT};
use handler::Handler;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use watchdog::Watchdog;

/// The ring features lithe passes through from the backend.
const RING_FEATURES: u64 = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

pub const TYPE_FS: u32 = 26;
/// The tag's field in the configuration space (`tag[36]`, NUL-padded).
pub const TAG_MAX: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag {0:?} must be 1 to {TAG_MAX} bytes")]
    Tag(String),
    #[error("its worker thread: {0}")]
    Worker(std::io::Error),
    #[error("vhost-user backend {socket}: {source}")]
    Backend { socket: String, source: BackendError },
    #[error("vhost-user backend {socket}: no answer within {limit:?}")]
    Timeout { socket: String, limit: std::time::Duration },
}

/// What the device and its worker share: whether the backend serves, why
/// it stopped, and the counters.
#[derive(Default)]
pub struct State {
    serving: AtomicBool,
    /// The backend raises the guest's irqfd itself.
    direct: AtomicBool,
    failure: Mutex<Option<String>>,
    relayed: AtomicU64,
    failed_requests: AtomicU64,
    socket: String,
}

impl State {
    /// Records the backend's failure, logged once, naming the device and backend.
    fn fail(&self, name: &str, why: &str) {
        self.serving.store(false, Ordering::Relaxed);
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            log::error!("{name}: vhost-user backend {}: {why}; requests on this mount now fail with EIO", self.socket);
            *f = Some(why.to_string());
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The device's shape: tag and queues, as `fs[]` gives them.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
    /// Request queues (the device adds the high-priority queue).
    pub request_queues: u16,
    pub queue_size: u16,
}

pub struct Fs {
    name: String,
    config_space: Vec<u8>,
    sizes: Vec<u16>,
    backend: Arc<Backend>,
    calls: Arc<Vec<EventFd>>,
    state: Arc<State>,
    worker: Worker<Handler>,
}

impl Fs {
    /// Starts the worker (`thread_init` first), which connects to the
    /// backend and negotiates; returns once it has, or with why not.
    pub fn new(name: &str, cfg: &FsConfig, thread_init: Option<ThreadInit>) -> Result<Fs, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_MAX {
            return Err(FsError::Tag(cfg.tag.clone()));
        }
        let queues = 1 + usize::from(cfg.request_queues);
        let socket = cfg.socket.display().to_string();
        let calls = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::Worker)?;
        let dog_name = format!("{}-dog", name.trim_start_matches("virtio-"));
        let watchdog = Arc::new(Watchdog::spawn(&dog_name, REPLY_LIMIT, thread_init.clone()).map_err(FsError::Worker)?);
        let worker = Worker::spawn(name, thread_init).map_err(FsError::Worker)?;
        let backend = connect_on(&worker, &cfg.socket, queues, watchdog)?;
        log::info!("{name}: tag {:?}, backend {socket} ({backend:?})", cfg.tag);
        let mut config_space = vec![0u8; TAG_MAX + 4];
        config_space[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config_space[TAG_MAX..].copy_from_slice(&u32::from(cfg.request_queues).to_le_bytes());
        Ok(Fs {
            name: name.to_string(),
            config_space,
            sizes: vec![cfg.queue_size; queues],
            backend: Arc::new(backend),
            calls: Arc::new(calls),
            state: Arc::new(State { socket, ..State::default() }),
            worker,
        })
    }

    /// Why the backend stopped serving, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state.failure()
    }

    /// Tells the backend a region was added (or removed), on the worker
    /// thread (whose filter allows the socket), and waits for it, bounded.
    /// A backend that has failed is told nothing: lithe answers its requests.
    fn tell_backend(&self, region: &Arc<GuestRegionMmap>, added: bool) -> Result<(), String> {
        if self.state.failure().is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (backend, region) = (self.backend.clone(), region.clone());
        self.worker
            .run(move || {
                let r = if added { backend.add_region(&region) } else { backend.remove_region(&region) };
                let _ = tx.send(r);
            })
            .map_err(|e| e.to_string())?;
        let limit = REPLY_LIMIT * 2;
        match rx.recv_timeout(limit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.state.fail(&self.name, &format!("announcing a memory region: {e}"));
                Err(format!("{}: {e}", self.name))
            }
            Err(_) => Err(format!("{}: the backend did not answer within {limit:?}", self.name)),
        }
    }
}

/// Connects on the worker thread (whose filter allows the socket) and waits
/// for it, bounded: the backend's replies are bounded by [`REPLY_LIMIT`] each.
fn connect_on(
    worker: &Worker<Handler>,
    path: &Path,
    queues: usize,
    watchdog: Arc<Watchdog>,
) -> Result<Backend, FsError> {
    let socket = path.display().to_string();
    let (tx, rx) = mpsc::sync_channel(1);
    let path = path.to_path_buf();
    worker
        .run(move || {
            let _ = tx.send(Backend::connect(&path, queues, watchdog));
        })
        .map_err(FsError::Worker)?;
    // Connect, plus a handful of exchanges each bounded by REPLY_LIMIT.
    let limit = REPLY_LIMIT * 6;
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|source| FsError::Backend { socket, source }),
        Err(_) => Err(FsError::Timeout { socket, limit }),
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    /// VERSION_1 and the backend's ring features: indirect descriptors (a
    /// 1 MiB read is one ring slot, not 257) and event indexes. lithe's
    /// fallback honours both (virtio-queue walks indirect tables; the
    /// fallback sets its queues' event index), so they bind it safely.
    fn features(&self) -> u64 {
        (VIRTIO_F_VERSION_1 | RING_FEATURES) & self.backend.features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        a.expect_queues(self.sizes.len())?;
        let (queues, kicks): (Vec<_>, Vec<_>) = a.queues.into_iter().unzip();
        let handler = Handler {
            name: self.name.clone(),
            backend: Some(self.backend.clone()),
            mem: a.mem,
            queues,
            kicks,
            calls: self.calls.clone(),
            interrupt: a.interrupt,
            features: a.features,
            state: self.state.clone(),
        };
        // No notifier for the worker to watch: the backend reads them.
        self.worker.start(handler, Vec::new()).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn memory_added(&mut self, region: &Arc<GuestRegionMmap>) -> Result<(), String> {
        self.tell_backend(region, true)
    }

    fn memory_removed(&mut self, region: &Arc<GuestRegionMmap>) -> Result<(), String> {
        self.tell_backend(region, false)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.state;
        vec![
            ("backend_serving", u64::from(s.serving.load(Ordering::Relaxed))),
            ("backend_failed", u64::from(s.failure().is_some())),
            ("interrupt_direct", u64::from(s.direct.load(Ordering::Relaxed))),
            ("used_signals", s.relayed.load(Ordering::Relaxed)),
            ("failed_requests", s.failed_requests.load(Ordering::Relaxed)),
        ]
    }
}
