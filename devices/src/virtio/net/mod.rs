//! virtio-net (virtio 1.2, 5.1) on a TAP ([`tap`]): one queue pair (receive
//! 0, transmit 1), the MAC in the configuration space, mergeable receive
//! buffers, and the guest's checksum and TSO offloads passed through the
//! TAP's virtio-net header untouched ([`rx`], [`tx`]).
//!
//! Receive is driven by the TAP's fd on the device's worker thread; when
//! the guest has no buffers, the frame waits and the TAP is not watched
//! until the guest's next receive notification, so a full guest costs no
//! CPU. A frame that can never fit, a malformed chain or a failed TAP write
//! drops that frame (counted, logged rate-limited); the VM goes on.

pub mod rx;
pub mod tap;
pub mod tx;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

use super::worker::{QueueHandler, Watch, Worker, FIRST_FD_TOKEN};
use super::{
    read_config_bytes, ActivateError, Activation, GuestMemoryHandle, ThreadInit, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::guest_warn;
use rx::Delivery;
use tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use tx::MAX_FRAME;

pub const TYPE_NET: u32 = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const RX: usize = 0;
const TX: usize = 1;
const TAP_TOKEN: u32 = FIRST_FD_TOKEN;
/// Frames moved per wakeup before the loop looks at its other events.
const BURST: usize = 256;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// What the guest sees of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    /// Offer checksum offload (both directions).
    pub offload_csum: bool,
    /// Offer TCP segmentation offload (both directions; needs checksums).
    pub offload_tso: bool,
}

#[derive(Default)]
struct Counters {
    rx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    tx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    errors: AtomicU64,
    /// The TAP failed a read (it went away): never watched again, said once.
    tap_failed: std::sync::atomic::AtomicBool,
}

pub struct Net {
    name: String,
    tap: Arc<Tap>,
    config: NetConfig,
    counters: Arc<Counters>,
    worker: Worker<Handler>,
}

impl Net {
    /// `tap` is opened by the caller (before any seccomp filter); the worker
    /// thread starts now, `thread_init` first.
    pub fn new(name: &str, tap: Tap, config: NetConfig, thread_init: Option<ThreadInit>) -> std::io::Result<Net> {
        let worker = Worker::spawn(name, thread_init)?;
        Ok(Net { name: name.to_string(), tap: Arc::new(tap), config, counters: Arc::default(), worker })
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }
}

struct Handler {
    name: String,
    mem: GuestMemoryHandle,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
    tap: Arc<Tap>,
    counters: Arc<Counters>,
    mergeable: bool,
    offload: u32,
    /// A frame read from the TAP that waits for receive buffers (`pending`
    /// bytes of it; 0: none).
    frame: Vec<u8>,
    pending: usize,
    tap_watched: bool,
    tx_buf: Vec<u8>,
}

impl Handler {
    fn watch_tap(&mut self, fds: &mut dyn Watch) {
        if !self.tap_watched && !self.counters.tap_failed.load(Ordering::Relaxed) {
            self.tap_watched = fds.watch(self.tap.as_raw_fd(), TAP_TOKEN, EventSet::IN);
        }
    }

    fn forget_tap(&mut self, fds: &mut dyn Watch) {
        if self.tap_watched {
            fds.forget(self.tap.as_raw_fd());
            self.tap_watched = false;
        }
    }

    /// Moves frames from the TAP into the guest while both have some.
    fn receive(&mut self, fds: &mut dyn Watch) {
        let mem = self.mem.memory();
        let mut placed_any = false;
        for _ in 0..BURST {
            if self.pending == 0 {
                match self.tap.read_frame(&mut self.frame) {
                    Ok(n) if n > 0 => self.pending = n,
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        if !self.counters.tap_failed.swap(true, Ordering::Relaxed) {
                            log::error!("{}: reading TAP {}: {e}; receive stops", self.name, self.tap.name());
                        }
                        self.forget_tap(fds);
                        return;
                    }
                }
            }
            match rx::place(&mem, &mut self.rx, &self.frame[..self.pending], self.mergeable) {
                Delivery::Placed(used) => {
                    for (head, len) in used {
                        if self.rx.add_used(&*mem, head, len).is_err() {
                            guest_warn!("{}: the receive used ring is not writable", self.name);
                        }
                    }
                    self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.counters.rx_bytes.fetch_add((self.pending - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                    self.pending = 0;
                    placed_any = true;
                }
                Delivery::NoBuffers => {
                    // Until the guest adds buffers (its notification calls us).
                    self.forget_tap(fds);
                    break;
                }
                Delivery::Dropped(why) => {
                    self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    guest_warn!("{}: received frame dropped: {why}", self.name);
                    self.pending = 0;
                }
            }
        }
        if self.pending == 0 {
            self.watch_tap(fds);
        }
        if placed_any {
            self.interrupt.signal_used();
        }
    }

    /// Sends every frame the guest queued.
    fn transmit(&mut self) {
        let mem = self.mem.memory();
        let mut used = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            match tx::gather(&mem, chain, &mut self.tx_buf) {
                Ok(()) => match self.tap.write_frame(&self.tx_buf) {
                    Ok(_) => {
                        self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                        self.counters.tx_bytes.fetch_add((self.tx_buf.len() - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
                        guest_warn!("{}: writing to TAP {}: {e}; the frame is dropped", self.name, self.tap.name());
                    }
                },
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    guest_warn!("{}: {e}; the frame is dropped", self.name);
                }
            }
            if self.tx.add_used(&*mem, head, 0).is_err() {
                guest_warn!("{}: the transmit used ring is not writable", self.name);
                break;
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
    }
}

impl QueueHandler for Handler {
    fn started(&mut self, fds: &mut dyn Watch) {
        // Here, on the worker thread: the TAP hands the guest only the
        // offloads it accepted.
        if let Err(e) = self.tap.set_offload(self.offload) {
            log::error!("{}: {e}; the TAP keeps its offloads", self.name);
        }
        self.watch_tap(fds);
    }

    fn stopped(&mut self, fds: &mut dyn Watch) {
        self.forget_tap(fds);
    }

    fn process_queue(&mut self, index: usize, fds: &mut dyn Watch) {
        match index {
            RX => self.receive(fds),
            TX => self.transmit(),
            _ => {}
        }
    }

    fn process_fd(&mut self, token: u32, _events: EventSet, fds: &mut dyn Watch) {
        if token == TAP_TOKEN {
            self.receive(fds);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_MRG_RXBUF);
        if self.config.offload_csum {
            f |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
            if self.config.offload_tso {
                f |= bit(VIRTIO_NET_F_HOST_TSO4)
                    | bit(VIRTIO_NET_F_HOST_TSO6)
                    | bit(VIRTIO_NET_F_GUEST_TSO4)
                    | bit(VIRTIO_NET_F_GUEST_TSO6);
            }
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config.mac, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        a.expect_queues(2)?;
        let has = |b: u32| a.features & bit(b) != 0;
        let mut offload = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= TUN_F_TSO6;
            }
        }
        let mut queues = a.queues.into_iter();
        let (rx, rx_notify) = queues.next().expect("two queues");
        let (tx, tx_notify) = queues.next().expect("two queues");
        let handler = Handler {
            name: self.name.clone(),
            mem: a.mem,
            rx,
            tx,
            interrupt: a.interrupt,
            tap: self.tap.clone(),
            counters: self.counters.clone(),
            mergeable: has(VIRTIO_NET_F_MRG_RXBUF),
            offload,
            frame: vec![0; MAX_FRAME],
            pending: 0,
            tap_watched: false,
            tx_buf: Vec::with_capacity(MAX_FRAME),
        };
        self.worker.start(handler, vec![rx_notify, tx_notify]).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("rx_bytes", l(&c.rx_bytes)),
            ("rx_frames", l(&c.rx_frames)),
            ("rx_dropped", l(&c.rx_dropped)),
            ("tx_bytes", l(&c.tx_bytes)),
            ("tx_frames", l(&c.tx_frames)),
            ("tx_dropped", l(&c.tx_dropped)),
            ("errors", l(&c.errors)),
        ]
    }
}
