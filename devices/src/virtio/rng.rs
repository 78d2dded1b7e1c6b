//! virtio-rng (virtio 1.2, 5.4): one queue; every buffer the guest offers
//! is filled from the host's entropy source (`/dev/urandom`, or the
//! configured `src`).

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::worker::{QueueHandler, Watch, Worker};
use super::{ActivateError, Activation, ThreadInit, VirtioDevice, VirtioInterrupt, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::guest_warn;

const QUEUE_SIZES: &[u16] = &[256];
/// Most bytes one request gets: a guest cannot make one request cost more.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

pub struct Rng {
    source: Arc<File>,
    counters: Arc<Counters>,
    worker: Worker<Handler>,
}

impl Rng {
    /// `source` is opened by the caller (before any seccomp filter); the
    /// worker thread starts now, `thread_init` first.
    pub fn new(source: File, thread_init: Option<ThreadInit>) -> std::io::Result<Rng> {
        let worker = Worker::spawn("virtio-rng", thread_init)?;
        Ok(Rng { source: Arc::new(source), counters: Arc::default(), worker })
    }
}

struct Handler {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    source: Arc<File>,
    counters: Arc<Counters>,
    buf: Vec<u8>,
}

impl Handler {
    /// Fills one chain's writable buffers; the bytes written.
    fn fill(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let mem = chain.memory();
        let mut written = 0usize;
        for d in chain.clone() {
            if !d.is_write_only() {
                continue;
            }
            let len = (d.len() as usize).min(MAX_REQUEST - written);
            if len == 0 {
                break;
            }
            self.buf.resize(len, 0);
            if let Err(e) = (&*self.source).read_exact(&mut self.buf[..len]) {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                log::error!("virtio-rng: reading the entropy source: {e}");
                break;
            }
            if mem.write_slice(&self.buf[..len], d.addr()).is_err() {
                guest_warn!("virtio-rng: buffer {:#x}+{len} is outside guest memory", d.addr().0);
                break;
            }
            written += len;
        }
        written as u32
    }
}

impl QueueHandler for Handler {
    fn process_queue(&mut self, _index: usize, _fds: &mut dyn Watch) {
        let mem = self.mem.memory();
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let n = self.fill(chain);
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(u64::from(n), Ordering::Relaxed);
            if self.queue.add_used(&*mem, head, n).is_err() {
                guest_warn!("virtio-rng: the used ring is not writable");
                return;
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        a.expect_queues(1)?;
        let (queue, notifier) = a.queues.into_iter().next().expect("one queue");
        let handler = Handler {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
            source: self.source.clone(),
            counters: self.counters.clone(),
            buf: Vec::new(),
        };
        self.worker.start(handler, vec![notifier]).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("read_bytes", self.counters.bytes.load(Ordering::Relaxed)),
            ("requests", self.counters.requests.load(Ordering::Relaxed)),
            ("errors", self.counters.errors.load(Ordering::Relaxed)),
        ]
    }
}
