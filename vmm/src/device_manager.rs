//! The VM's virtio devices: it makes each device from the configuration,
//! gives it an MMIO window and a GSI, wires its queue notifications in
//! through KVM ioeventfds and its interrupt out through an irqfd into
//! lithe's IOAPIC, describes it in the DSDT, and resets it when the VM goes.
//!
//! Adding a device kind is its file under `devices/src/virtio/` and one arm
//! in [`DeviceManager::new`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use log::info;

use devices::virtio::block::{Block, DiskConfig as BlockConfig};
use devices::virtio::fs::{Fs, FsConfig as FsDeviceConfig, FsError};
use devices::virtio::mmio::{MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use devices::virtio::net::tap::{Tap, TapError};
use devices::virtio::net::{Net, NetConfig as NetDeviceConfig};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::{GuestMemoryHandle, ThreadInit, VirtioDevice, VirtioInterrupt};
use devices::{Bus, BusError};

use crate::acpi::virtio_aml::MmioDevice;
use crate::arch::irq_routing::irqfd;
use crate::config::DevicesConfig;
use crate::memory::VIRTIO_MMIO_BASE;

/// The first GSI virtio devices get; the IOAPIC has pins up to 23.
pub const VIRTIO_GSI_BASE: u32 = 16;
/// How many virtio devices fit the IOAPIC's pins.
pub const MAX_DEVICES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("disk {index} ({path}): {source}")]
    Disk { index: usize, path: String, source: std::io::Error },
    #[error("rng source {path}: {source}")]
    Rng { path: String, source: std::io::Error },
    #[error("vsock socket {path}: {source}")]
    Vsock { path: String, source: std::io::Error },
    #[error("net {index}: {source}")]
    Tap { index: usize, source: TapError },
    #[error("net {index}: {source}")]
    Net { index: usize, source: std::io::Error },
    #[error("fs {index}: {source}")]
    Fs { index: usize, source: FsError },
    #[error("{name}: {source}")]
    Create { name: String, source: std::io::Error },
    #[error("{name}: KVM_IOEVENTFD for queue {queue}: {source}")]
    IoEvent { name: String, queue: usize, source: kvm_ioctls::Error },
    #[error("{name}: its interrupt: {source}")]
    Interrupt { name: String, source: std::io::Error },
    #[error("mapping a virtio device: {0}")]
    Bus(#[from] BusError),
    #[error("{count} virtio devices, but lithe has interrupts for {MAX_DEVICES}")]
    TooMany { count: usize },
}

/// What each kind of device worker runs first (its seccomp filter).
#[derive(Default, Clone)]
pub struct WorkerInit {
    /// Disks and the rng: their files only.
    pub device: Option<ThreadInit>,
    /// vsock: Unix sockets too.
    pub vsock: Option<ThreadInit>,
    /// net: its TAP, and the TAP's offload ioctl.
    pub net: Option<ThreadInit>,
    /// virtio-fs: its vhost-user session's socket.
    pub fs: Option<ThreadInit>,
}

/// One device on the bus.
pub struct VirtioSlot {
    pub name: String,
    pub window: MmioDevice,
    pub transport: Arc<MmioTransport>,
}

#[derive(Default)]
pub struct DeviceManager {
    slots: Vec<VirtioSlot>,
}

impl DeviceManager {
    /// Makes every configured device and maps it on `mmio`. Files and the
    /// vsock socket are opened here, on the main thread, before any seccomp
    /// filter; each device's worker thread runs its `init` first.
    pub fn new(
        config: &DevicesConfig,
        vm: &VmFd,
        mem: &GuestMemoryHandle,
        mmio: &mut Bus,
        init: &WorkerInit,
    ) -> Result<DeviceManager, DeviceError> {
        let thread_init = init.device.clone();
        let mut made: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for (index, d) in config.disks.iter().enumerate() {
            let path = d.path.display().to_string();
            let disk_err = |source| DeviceError::Disk { index, path: path.clone(), source };
            let mut open = OpenOptions::new();
            open.read(true).write(!d.readonly);
            if d.direct {
                open.custom_flags(libc::O_DIRECT);
            }
            let file = open.open(&d.path).map_err(disk_err)?;
            let serial = d.serial.clone().or_else(|| d.id.clone()).unwrap_or_default();
            let name = format!("virtio-blk{index}");
            let cfg = BlockConfig { read_only: d.readonly, direct: d.direct, serial };
            made.push(Box::new(Block::new(&name, file, cfg, thread_init.clone()).map_err(disk_err)?));
        }
        if let Some(r) = &config.rng {
            let path = r.src.display().to_string();
            let file = std::fs::File::open(&r.src).map_err(|source| DeviceError::Rng { path: path.clone(), source })?;
            made.push(Box::new(
                Rng::new(file, thread_init.clone()).map_err(|source| DeviceError::Rng { path, source })?,
            ));
        }
        if let Some(v) = &config.vsock {
            let path = v.socket.display().to_string();
            let dev = Vsock::new(v.cid, &v.socket, init.vsock.clone())
                .map_err(|source| DeviceError::Vsock { path, source })?;
            made.push(Box::new(dev));
        }
        for (index, n) in config.net.iter().enumerate() {
            let tap = match (&n.tap, n.fd) {
                (Some(name), _) => Tap::open(name),
                (None, Some(fd)) => {
                    // A duplicate: the configured fd stays open for the
                    // next build of this VM (a reboot).
                    // SAFETY: validation checked that `fd` is open, and the
                    // configuration keeps it open while the VM exists.
                    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    borrowed
                        .try_clone_to_owned()
                        .map_err(|e| TapError::Ioctl { op: "dup", name: format!("fd {fd}"), source: e })
                        .and_then(Tap::from_fd)
                }
                (None, None) => Err(TapError::Name(String::new())),
            }
            .map_err(|source| DeviceError::Tap { index, source })?;
            let mac = n.mac_bytes().map_err(|e| DeviceError::Net { index, source: std::io::Error::other(e) })?;
            let cfg = NetDeviceConfig { mac, offload_csum: n.offload_csum, offload_tso: n.offload_tso };
            let name = format!("virtio-net{index}");
            info!("{name}: TAP {}, MAC {}", tap.name(), n.mac);
            made.push(Box::new(
                Net::new(&name, tap, cfg, init.net.clone()).map_err(|source| DeviceError::Net { index, source })?,
            ));
        }
        for (index, f) in config.fs.iter().enumerate() {
            let cfg = FsDeviceConfig {
                tag: f.tag.clone(),
                socket: f.socket.clone(),
                request_queues: f.num_queues,
                queue_size: f.queue_size,
            };
            let name = format!("virtio-fs{index}");
            made.push(Box::new(
                Fs::new(&name, &cfg, init.fs.clone()).map_err(|source| DeviceError::Fs { index, source })?,
            ));
        }
        if made.len() > MAX_DEVICES {
            return Err(DeviceError::TooMany { count: made.len() });
        }
        let mut slots = Vec::new();
        for (i, device) in made.into_iter().enumerate() {
            let window = MmioDevice {
                base: VIRTIO_MMIO_BASE + i as u64 * MMIO_LEN,
                len: MMIO_LEN,
                gsi: VIRTIO_GSI_BASE + i as u32,
            };
            let name = device.name().to_string();
            let trigger =
                irqfd(vm, window.gsi).map_err(|source| DeviceError::Interrupt { name: name.clone(), source })?;
            let interrupt = Arc::new(VirtioInterrupt::new(Box::new(trigger)));
            let transport = Arc::new(
                MmioTransport::new(device, mem.clone(), interrupt)
                    .map_err(|source| DeviceError::Create { name: name.clone(), source })?,
            );
            for (queue, notifier) in transport.notifiers().iter().enumerate() {
                let addr = IoEventAddress::Mmio(window.base + NOTIFY_OFFSET);
                vm.register_ioevent(notifier.as_ref(), &addr, queue as u32).map_err(|source| DeviceError::IoEvent {
                    name: name.clone(),
                    queue,
                    source,
                })?;
            }
            mmio.insert(window.base, window.len, transport.clone())?;
            info!("{name}: virtio-mmio at {:#x}, GSI {}", window.base, window.gsi);
            slots.push(VirtioSlot { name, window, transport });
        }
        Ok(DeviceManager { slots })
    }

    /// Where each device is, for the DSDT.
    pub fn windows(&self) -> Vec<MmioDevice> {
        self.slots.iter().map(|s| s.window).collect()
    }

    /// Each device's counters, by name (`vm.counters`).
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.transport.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            .collect()
    }

    /// Tells every device guest memory gained (`added`) or lost `region`;
    /// the first device that could not take it, and why.
    pub fn memory_changed(&self, region: &Arc<vm_memory::GuestRegionMmap>, added: bool) -> Result<(), String> {
        for s in &self.slots {
            s.transport.memory_changed(region, added)?;
        }
        Ok(())
    }

    /// Stops every device (the VM is going): their workers let go of guest memory.
    pub fn reset_all(&self) {
        for s in &self.slots {
            s.transport.reset();
        }
    }
}
