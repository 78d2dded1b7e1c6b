//! The vhost-user session with a virtio-fs backend (an unmodified
//! virtiofsd), through rust-vmm's `vhost` frontend: connect and negotiate
//! when the device is made; hand over guest memory and the rings when the
//! guest activates the device; take the rings back when it resets.
//!
//! Every call runs on the device's worker thread (its seccomp filter allows
//! the socket; a vCPU's does not), and every exchange is bounded by
//! [`REPLY_LIMIT`] ([`Watchdog`]): a backend that stops answering fails the
//! device, it never holds a lithe thread.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::Watchdog;
use crate::virtio::VIRTIO_F_VERSION_1;

/// The longest lithe waits for one reply (or to send one message).
pub const REPLY_LIMIT: Duration = Duration::from_secs(5);

/// The protocol features lithe uses when the backend has them: several
/// queues, an acknowledgement for every message (so a failed setup is seen
/// at the message that failed), and memory slots one by one (growth).
fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{step}: {source}")]
    Protocol { step: &'static str, source: vhost::Error },
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    #[error("the backend serves {offered} queues, the device needs {needed}")]
    Queues { offered: u64, needed: usize },
    #[error("guest memory region at {addr:#x} has no file to share (memory.shared is off)")]
    NotShared { addr: u64 },
    #[error("ring {index}: its {what} at {addr:#x} is outside guest memory")]
    RingAddress { index: usize, what: &'static str, addr: u64 },
}

/// One exchange, bounded by the watchdog; a failure names its step.
fn step<T>(dog: &Watchdog, step: &'static str, f: impl FnOnce() -> vhost::Result<T>) -> Result<T, BackendError> {
    dog.guard(f).map_err(|source| BackendError::Protocol { step, source })
}

/// One queue as the backend needs it.
pub struct Ring<'a> {
    pub size: u16,
    pub max_size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where the backend starts in the available ring.
    pub base: u16,
    /// What the backend writes when it used buffers (lithe relays it).
    pub call: &'a EventFd,
    /// What the guest's notification writes (KVM's ioeventfd).
    pub kick: &'a EventFd,
}

/// A negotiated session with one backend.
pub struct Backend {
    frontend: Frontend,
    /// The backend's virtio features.
    features: u64,
    protocol: VhostUserProtocolFeatures,
    queues: usize,
    watchdog: Arc<Watchdog>,
}

impl Backend {
    /// Connects to the backend listening on `path` and negotiates a device
    /// with `queues` queues.
    pub fn connect(path: &Path, queues: usize, watchdog: Arc<Watchdog>) -> Result<Backend, BackendError> {
        Backend::negotiate(UnixStream::connect(path).map_err(BackendError::Connect)?, queues, watchdog)
    }

    /// Negotiates over a connected session socket (tests and the fuzz
    /// target hand one end of a socket pair).
    pub fn negotiate(sock: UnixStream, queues: usize, watchdog: Arc<Watchdog>) -> Result<Backend, BackendError> {
        // A send to a backend that reads nothing fails after this; receives
        // are bounded by the watchdog (the crate retries timed-out ones).
        sock.set_write_timeout(Some(REPLY_LIMIT)).map_err(BackendError::Connect)?;
        let mut frontend = Frontend::from_stream(sock, queues as u64);
        let dog = &*watchdog;
        dog.set_socket(frontend.as_raw_fd());
        let r = Backend::handshake(&mut frontend, queues, dog);
        if r.is_err() {
            dog.clear_socket();
        }
        let (features, protocol) = r?;
        Ok(Backend { frontend, features, protocol, queues, watchdog })
    }

    fn handshake(
        frontend: &mut Frontend,
        queues: usize,
        dog: &Watchdog,
    ) -> Result<(u64, VhostUserProtocolFeatures), BackendError> {
        step(dog, "SET_OWNER", || frontend.set_owner())?;
        let features = step(dog, "GET_FEATURES", || frontend.get_features())?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(BackendError::NoVersion1(features));
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = step(dog, "GET_PROTOCOL_FEATURES", || frontend.get_protocol_features())?;
            protocol = offered & wanted_protocol();
            step(dog, "SET_PROTOCOL_FEATURES", || frontend.set_protocol_features(protocol))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let offered = step(dog, "GET_QUEUE_NUM", || frontend.get_queue_num())?;
                if offered < queues as u64 {
                    return Err(BackendError::Queues { offered, needed: queues });
                }
            }
        }
        Ok((features, protocol))
    }

    /// The backend's virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The session's socket: readable or hung up only when the backend
    /// closed it (it sends nothing unasked).
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    fn enables_rings(&self) -> bool {
        self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Starts the backend on the guest's rings: the features the driver
    /// accepted, the memory map with each region's fd, then each ring.
    pub fn start(&self, mem: &GuestMemoryMmap, driver_features: u64, rings: &[Ring]) -> Result<(), BackendError> {
        let mut frontend = self.frontend.clone();
        let dog = &*self.watchdog;
        let features = driver_features | (self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        step(dog, "SET_FEATURES", || frontend.set_features(features))?;
        let regions = memory_regions(mem)?;
        step(dog, "SET_MEM_TABLE", || frontend.set_mem_table(&regions))?;
        for (index, r) in rings.iter().enumerate() {
            let host = |what, addr| {
                mem.get_host_address(GuestAddress(addr)).map(|p| p as u64).map_err(|_| BackendError::RingAddress {
                    index,
                    what,
                    addr,
                })
            };
            let config = VringConfigData {
                queue_max_size: r.max_size,
                queue_size: r.size,
                flags: 0,
                desc_table_addr: host("descriptor table", r.desc)?,
                used_ring_addr: host("used ring", r.used)?,
                avail_ring_addr: host("available ring", r.avail)?,
                log_addr: None,
            };
            step(dog, "SET_VRING_NUM", || frontend.set_vring_num(index, r.size))?;
            step(dog, "SET_VRING_ADDR", || frontend.set_vring_addr(index, &config))?;
            step(dog, "SET_VRING_BASE", || frontend.set_vring_base(index, r.base))?;
            step(dog, "SET_VRING_CALL", || frontend.set_vring_call(index, r.call))?;
            step(dog, "SET_VRING_KICK", || frontend.set_vring_kick(index, r.kick))?;
            if self.enables_rings() {
                step(dog, "SET_VRING_ENABLE", || frontend.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// Maps a region of guest memory added while the backend serves
    /// (memory hotplug), before the guest may use it.
    pub fn add_region(&self, region: &GuestRegionMmap) -> Result<(), BackendError> {
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|_| BackendError::NotShared { addr: region.start_addr().0 })?;
        let mut frontend = self.frontend.clone();
        step(&self.watchdog, "ADD_MEM_REG", || frontend.add_mem_region(&info).map(|_| ()))
    }

    /// Unmaps a region the guest gave back (memory hotplug).
    pub fn remove_region(&self, region: &GuestRegionMmap) -> Result<(), BackendError> {
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|_| BackendError::NotShared { addr: region.start_addr().0 })?;
        let mut frontend = self.frontend.clone();
        step(&self.watchdog, "REM_MEM_REG", || frontend.remove_mem_region(&info))
    }

    /// Stops every ring (the guest reset the device): the backend lets go
    /// of them before `GET_VRING_BASE` answers.
    pub fn stop(&self) -> Result<(), BackendError> {
        let mut frontend = self.frontend.clone();
        let dog = &*self.watchdog;
        for index in 0..self.queues {
            if self.enables_rings() {
                step(dog, "SET_VRING_ENABLE", || frontend.set_vring_enable(index, false))?;
            }
            step(dog, "GET_VRING_BASE", || frontend.get_vring_base(index))?;
        }
        Ok(())
    }
}

/// Each RAM region with the fd and offset the backend maps it from.
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, BackendError> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r)
                .map_err(|_| BackendError::NotShared { addr: r.start_addr().0 })
        })
        .collect()
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The socket closes with `frontend`, after this.
        self.watchdog.clear_socket();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .finish()
    }
}
