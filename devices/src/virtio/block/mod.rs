//! virtio-blk (virtio 1.2, 5.2) on a raw image file: read, write, flush
//! (`fdatasync`), get-id (the serial), read-only disks, `seg_max` and
//! `size_max` advertised and enforced, `O_DIRECT` when asked.
//!
//! The I/O is synchronous on the device's own thread, through a bounce
//! buffer (aligned for `O_DIRECT`): the chain's layout is whatever the guest
//! built, and virtio-queue's `Reader`/`Writer` walk it safely.

pub mod request;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::worker::{QueueHandler, Watch, Worker};
use super::VIRTIO_F_VERSION_1;
use super::{read_config_bytes, ActivateError, Activation, ThreadInit, VirtioDevice, VirtioInterrupt, TYPE_BLOCK};
use crate::guest_warn;
use request::{fail_chain, Kind, Limits, Request, RequestError, ID_BYTES, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP};

/// Feature bits (virtio 1.2, 5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

/// 1024 descriptors: room for a whole 1 MiB request of scattered pages
/// (256 segments plus header and status) with others in flight, without
/// indirect descriptors, which would cost the guest an allocation on
/// every request, small ones too.
const QUEUE_SIZES: &[u16] = &[1024];
/// Data segments per request, and bytes per segment, as advertised: Linux
/// sends a 1 MiB request of 4 KiB pages as one request (with 126 segments,
/// as before, it was three). 64 KiB segments bound a request, and the
/// bounce buffer, to 16 MiB.
pub const SEG_MAX: u32 = 256;
pub const SIZE_MAX: u32 = 64 << 10;
/// Bytes `O_DIRECT` buffers are aligned to.
const DIRECT_ALIGN: usize = 4096;

/// How a disk is set up.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub read_only: bool,
    pub direct: bool,
    /// What `GET_ID` returns (at most 20 bytes are used).
    pub serial: String,
}

/// Cloud Hypervisor's block counter names.
#[derive(Default)]
struct Counters {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    read_ops: AtomicU64,
    write_ops: AtomicU64,
    flush_ops: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds of device-thread CPU time spent on requests.
    cpu_ns: AtomicU64,
}

pub struct Block {
    name: String,
    file: Arc<File>,
    config: DiskConfig,
    capacity: u64,
    counters: Arc<Counters>,
    worker: Worker<Handler>,
}

impl Block {
    /// `file` is opened by the caller (before any seccomp filter), with
    /// `O_DIRECT` if `config.direct`. Its size, rounded down to whole
    /// sectors, is the disk's capacity. The worker thread starts now,
    /// `thread_init` first.
    pub fn new(name: &str, file: File, config: DiskConfig, thread_init: Option<ThreadInit>) -> std::io::Result<Block> {
        let capacity = file.metadata()?.len() / SECTOR_SIZE * SECTOR_SIZE;
        let worker = Worker::spawn(name, thread_init)?;
        Ok(Block { name: name.to_string(), file: Arc::new(file), config, capacity, counters: Arc::default(), worker })
    }

    /// The disk's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn config_space(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&(self.capacity / SECTOR_SIZE).to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }
}

struct Handler {
    name: String,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    file: Arc<File>,
    limits: Limits,
    direct: bool,
    serial: String,
    counters: Arc<Counters>,
    buf: Vec<u8>,
}

/// Thread CPU time, for the per-request cost counter.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

impl Handler {
    /// A buffer of `len` bytes, aligned for `O_DIRECT` when the disk uses it.
    fn buffer(&mut self, len: usize) -> &mut [u8] {
        let pad = if self.direct { DIRECT_ALIGN } else { 0 };
        if self.buf.len() < len + pad {
            self.buf.resize(len + pad, 0);
        }
        let start = if self.direct { self.buf.as_ptr().align_offset(DIRECT_ALIGN).min(pad) } else { 0 };
        &mut self.buf[start..start + len]
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> u8 {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        guest_warn!("{}: {what} failed: {e}; the request fails with IOERR", self.name);
        S_IOERR
    }

    /// Serves one parsed request; its status.
    fn serve(&mut self, req: &mut Request<'_>) -> u8 {
        match req.kind.clone() {
            Kind::Read { offset, len } => {
                let file = self.file.clone();
                let buf = self.buffer(len);
                if let Err(e) = file.read_exact_at(buf, offset) {
                    return self.io_error("reading the disk", e);
                }
                // The same bytes: the buffer is already large enough.
                let buf = self.buffer(len);
                if req.write_data(buf).is_err() {
                    return S_IOERR;
                }
                self.counters.read_ops.fetch_add(1, Ordering::Relaxed);
                self.counters.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
                S_OK
            }
            Kind::Write { offset, len } => {
                let file = self.file.clone();
                let buf = self.buffer(len);
                if req.read_data(buf).is_err() {
                    return S_IOERR;
                }
                let buf = self.buffer(len);
                if let Err(e) = file.write_all_at(buf, offset) {
                    return self.io_error("writing the disk", e);
                }
                self.counters.write_ops.fetch_add(1, Ordering::Relaxed);
                self.counters.write_bytes.fetch_add(len as u64, Ordering::Relaxed);
                S_OK
            }
            Kind::Flush => {
                if let Err(e) = self.file.sync_data() {
                    return self.io_error("flushing the disk", e);
                }
                self.counters.flush_ops.fetch_add(1, Ordering::Relaxed);
                S_OK
            }
            Kind::GetId => {
                let mut id = [0u8; ID_BYTES];
                let s = self.serial.as_bytes();
                let n = s.len().min(ID_BYTES);
                id[..n].copy_from_slice(&s[..n]);
                match req.write_data(&id) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            Kind::Unsupported(t) => {
                guest_warn!("{}: request type {t} is not supported", self.name);
                S_UNSUPP
            }
        }
    }
}

impl QueueHandler for Handler {
    fn process_queue(&mut self, _index: usize, _fds: &mut dyn Watch) {
        let t0 = thread_cpu_ns();
        let mem = self.mem.memory();
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let len = match Request::parse(&mem, chain.clone(), &self.limits) {
                Ok(mut req) => {
                    let status = self.serve(&mut req);
                    req.finish(status)
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !matches!(e, RequestError::ReadOnly) {
                        guest_warn!("{}: bad request: {e}", self.name);
                    }
                    fail_chain(&mem, chain)
                }
            };
            if self.queue.add_used(&*mem, head, len).is_err() {
                guest_warn!("{}: the used ring is not writable guest memory", self.name);
                break;
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
        self.counters.cpu_ns.fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = if self.config.read_only { F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        a.expect_queues(1)?;
        let (queue, notifier) = a.queues.into_iter().next().expect("one queue");
        let handler = Handler {
            name: self.name.clone(),
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
            file: self.file.clone(),
            limits: Limits {
                capacity: self.capacity,
                seg_max: SEG_MAX,
                max_bytes: SEG_MAX as usize * SIZE_MAX as usize,
                read_only: self.config.read_only,
            },
            direct: self.config.direct,
            serial: self.config.serial.clone(),
            counters: self.counters.clone(),
            buf: Vec::new(),
        };
        self.worker.start(handler, vec![notifier]).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("read_bytes", l(&c.read_bytes)),
            ("write_bytes", l(&c.write_bytes)),
            ("read_ops", l(&c.read_ops)),
            ("write_ops", l(&c.write_ops)),
            ("flush_ops", l(&c.flush_ops)),
            ("errors", l(&c.errors)),
            ("device_cpu_ns", l(&c.cpu_ns)),
        ]
    }
}
