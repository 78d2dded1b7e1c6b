//! virtio-vsock (virtio 1.2, 5.10) with the hybrid host side ([`muxer`]):
//! three queues (rx, tx, event), the guest's CID in the configuration
//! space, and a Unix socket on the host where processes `CONNECT` to guest
//! ports.

pub mod muxer;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::worker::Worker;
use super::{read_config_bytes, ActivateError, Activation, ThreadInit, VirtioDevice, VIRTIO_F_VERSION_1};
use muxer::{Counters, Muxer};

pub const TYPE_VSOCK: u32 = 19;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];

pub struct Vsock {
    guest_cid: u64,
    listener: Arc<UnixListener>,
    path: PathBuf,
    counters: Arc<Counters>,
    worker: Worker<Muxer>,
}

impl Vsock {
    /// Binds `path` (a stale socket file there is replaced) before any
    /// seccomp filter; the worker starts now, `thread_init` first.
    pub fn new(guest_cid: u64, path: &Path, thread_init: Option<ThreadInit>) -> std::io::Result<Vsock> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let worker = Worker::spawn("vsock", thread_init)?;
        Ok(Vsock {
            guest_cid,
            listener: Arc::new(listener),
            path: path.to_path_buf(),
            counters: Arc::default(),
            worker,
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn name(&self) -> &str {
        "vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        a.expect_queues(3)?;
        let (queues, notifiers): (Vec<_>, Vec<_>) = a.queues.into_iter().unzip();
        let muxer = Muxer::new(
            a.mem,
            queues,
            a.interrupt,
            self.guest_cid,
            self.listener.clone(),
            self.path.clone(),
            self.counters.clone(),
        );
        self.worker.start(muxer, notifiers).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("connections", c.connections.load(Ordering::Relaxed)),
            ("rx_bytes", c.rx_bytes.load(Ordering::Relaxed)),
            ("tx_bytes", c.tx_bytes.load(Ordering::Relaxed)),
            ("resets", c.resets.load(Ordering::Relaxed)),
        ]
    }
}
