//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register
//! block a guest driver programs, the feature negotiation and the device
//! status state machine. It owns the queues' configuration until the guest
//! says `DRIVER_OK`, then hands them to the device.
//!
//! Lithe's own rather than a crate's: rust-vmm has no maintained MMIO
//! transport, and this one is the register protocol alone (Firecracker's
//! `transport/mmio.rs` is the same size).
//!
//! Everything a guest writes is checked; a write that does not fit the
//! protocol is logged (rate-limited) and ignored, and a setup the device
//! cannot run marks the device `NEEDS_RESET` with a configuration interrupt.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::INT_CONFIG;
use super::{Activation, GuestMemoryHandle, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::guest_warn;

/// Bytes of MMIO space per device: registers, then its configuration space.
pub const MMIO_LEN: u64 = 0x1000;
/// `QueueNotify`'s offset: KVM's ioeventfds watch writes here.
pub const NOTIFY_OFFSET: u64 = 0x50;
const CONFIG_OFFSET: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c49_5448; // "LITH"

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

struct State {
    device: Box<dyn VirtioDevice>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
    active: bool,
    activations: u64,
}

pub struct MmioTransport {
    state: Mutex<State>,
    /// One per queue: what KVM's ioeventfd writes for `QueueNotify` = index.
    /// Shared with the device's worker, never duplicated: activation runs in a
    /// vCPU's MMIO exit, whose seccomp filter allows no `dup`.
    notifiers: Vec<Arc<EventFd>>,
    interrupt: Arc<VirtioInterrupt>,
    mem: GuestMemoryHandle,
    name: String,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryHandle,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<MmioTransport> {
        let sizes = device.queue_max_sizes().to_vec();
        let queues = sizes.iter().map(|&s| Queue::new(s).expect("a device's queue sizes are powers of two")).collect();
        let notifiers =
            sizes.iter().map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new)).collect::<Result<_, _>>()?;
        let name = device.name().to_string();
        let state = State {
            device,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            active: false,
            activations: 0,
        };
        Ok(MmioTransport { state: Mutex::new(state), notifiers, interrupt, mem, name })
    }

    /// The eventfd that queue `index`'s notifications should write.
    pub fn notifiers(&self) -> &[Arc<EventFd>] {
        &self.notifiers
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's counters plus the transport's.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.lock();
        let mut c = s.device.counters();
        c.push(("interrupts", self.interrupt.raised()));
        c.push(("status", u64::from(s.status)));
        c.push(("activations", s.activations));
        c
    }

    /// Guest memory gained (`added`) or lost a region: the device hears of it.
    pub fn memory_changed(&self, region: &Arc<vm_memory::GuestRegionMmap>, added: bool) -> Result<(), String> {
        let mut s = self.lock();
        if added {
            s.device.memory_added(region)
        } else {
            s.device.memory_removed(region)
        }
    }

    /// Stops the device and forgets what the guest set up: a status write
    /// of 0, and every VM reboot.
    pub fn reset(&self) {
        let mut s = self.lock();
        self.reset_locked(&mut s);
    }

    fn reset_locked(&self, s: &mut State) {
        if s.active {
            s.device.reset();
            s.active = false;
        }
        s.status = 0;
        s.device_features_sel = 0;
        s.driver_features_sel = 0;
        s.driver_features = 0;
        s.queue_sel = 0;
        for q in &mut s.queues {
            q.reset();
        }
        for n in &self.notifiers {
            let _ = n.read();
        }
        self.interrupt.clear();
    }

    fn needs_reset(&self, s: &mut State, why: &str) {
        // What the guest set up: rate-limited, a guest may do it in a loop.
        guest_warn!("{}: {why}; the device needs a reset", self.name);
        s.status |= STATUS_NEEDS_RESET;
        s.config_generation = s.config_generation.wrapping_add(1);
        self.interrupt.signal(INT_CONFIG);
    }

    fn set_status(&self, s: &mut State, v: u32) {
        if v == 0 {
            self.reset_locked(s);
            return;
        }
        // The driver only ever adds bits (except through a reset).
        if v & s.status != s.status {
            guest_warn!("{}: status {v:#x} clears bits of {:#x} without a reset; ignored", self.name, s.status);
            return;
        }
        let new = v & !s.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = s.device.features();
            if s.driver_features & !offered != 0 || s.driver_features & VIRTIO_F_VERSION_1 == 0 {
                guest_warn!(
                    "{}: driver features {:#x} are not a subset of {offered:#x} with VERSION_1; FEATURES_OK refused",
                    self.name,
                    s.driver_features
                );
                s.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        s.status = v;
        if new & STATUS_DRIVER_OK != 0 && !s.active {
            if s.status & STATUS_FEATURES_OK == 0 {
                self.needs_reset(s, "the driver said DRIVER_OK before FEATURES_OK");
                return;
            }
            self.activate(s);
        }
    }

    fn activate(&self, s: &mut State) {
        let mem = self.mem.memory();
        let mut queues = Vec::new();
        for (i, q) in s.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&*mem) {
                return self.needs_reset(s, &format!("queue {i} is not valid (size, alignment or addresses)"));
            }
            let mut q = match Queue::try_from(q.state()) {
                Ok(q) => q,
                Err(e) => return self.needs_reset(s, &format!("queue {i}: {e:?}")),
            };
            q.set_event_idx(false);
            queues.push((q, self.notifiers[i].clone()));
        }
        let a = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: s.driver_features,
        };
        match s.device.activate(a) {
            Ok(()) => {
                s.active = true;
                s.activations += 1;
                // The first time at info; a guest may reset and activate in a loop.
                if s.activations == 1 {
                    log::info!("{}: activated", self.name);
                } else {
                    log::debug!("{}: activated again ({} times)", self.name, s.activations);
                }
            }
            Err(e) => self.needs_reset(s, &format!("activation failed: {e}")),
        }
    }

    fn write_queue_reg(&self, s: &mut State, offset: u64, v: u32) {
        let sel = s.queue_sel as usize;
        let name = &self.name;
        let Some(q) = s.queues.get_mut(sel) else {
            guest_warn!("{name}: queue register {offset:#x} written for queue {sel}, which does not exist; ignored");
            return;
        };
        if q.ready() && offset != 0x44 {
            guest_warn!("{name}: queue {sel} register {offset:#x} written while the queue is ready; ignored");
            return;
        }
        match offset {
            0x38 => {
                if !v.is_power_of_two() || v > u32::from(q.max_size()) {
                    guest_warn!("{name}: queue {sel} size {v} is not a power of two up to {}; ignored", q.max_size());
                    return;
                }
                q.set_size(v as u16)
            }
            0x44 => q.set_ready(v == 1),
            0x80 => q.set_desc_table_address(Some(v), None),
            0x84 => q.set_desc_table_address(None, Some(v)),
            0x90 => q.set_avail_ring_address(Some(v), None),
            0x94 => q.set_avail_ring_address(None, Some(v)),
            0xa0 => q.set_used_ring_address(Some(v), None),
            0xa4 => q.set_used_ring_address(None, Some(v)),
            _ => unreachable!("only queue registers come here"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        if offset >= CONFIG_OFFSET {
            if offset - CONFIG_OFFSET + data.len() as u64 > MMIO_LEN - CONFIG_OFFSET {
                data.fill(0);
                return;
            }
            s.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 {
            guest_warn!("{}: {}-byte register read at {offset:#x}; registers are 32-bit", self.name, data.len());
            data.fill(0xff);
            return;
        }
        let features = s.device.features();
        let v: u32 = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => s.device.device_type(),
            0x0c => VENDOR,
            0x10 => match s.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            0x34 => s.queues.get(s.queue_sel as usize).map_or(0, |q| u32::from(q.max_size())),
            0x44 => s.queues.get(s.queue_sel as usize).map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => s.status,
            // No shared memory regions: their length reads as -1.
            0xb0 | 0xb4 => u32::MAX,
            0xfc => s.config_generation,
            _ => {
                guest_warn!("{}: read of write-only or unknown register {offset:#x}", self.name);
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut s = self.lock();
        if offset >= CONFIG_OFFSET {
            if s.status & STATUS_DRIVER == 0 {
                guest_warn!("{}: config write before DRIVER; ignored", self.name);
                return;
            }
            s.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!("{}: {}-byte register write at {offset:#x}; registers are 32-bit", self.name, data.len());
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let setting_up = s.status & STATUS_DRIVER != 0 && s.status & STATUS_FEATURES_OK == 0;
        match offset {
            0x14 => s.device_features_sel = v,
            0x20 if setting_up => match s.driver_features_sel {
                0 => s.driver_features = (s.driver_features & !0xffff_ffff) | u64::from(v),
                1 => s.driver_features = (s.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                sel => guest_warn!("{}: driver features bank {sel} written; ignored", self.name),
            },
            0x20 => guest_warn!("{}: driver features written in status {:#x}; ignored", self.name, s.status),
            0x24 => s.driver_features_sel = v,
            0x30 => s.queue_sel = v,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if s.status & STATUS_FEATURES_OK == 0 || s.status & STATUS_DRIVER_OK != 0 {
                    guest_warn!("{}: queue register {offset:#x} written in status {:#x}; ignored", self.name, s.status);
                } else {
                    self.write_queue_reg(&mut s, offset, v);
                }
            }
            NOTIFY_OFFSET => match self.notifiers.get(v as usize) {
                // Without KVM's ioeventfd (or for a queue index it does not
                // match) the write lands here: pass it on the same way.
                Some(n) => {
                    let _ = n.write(1);
                }
                None => guest_warn!("{}: notify for queue {v}, which does not exist", self.name),
            },
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(&mut s, v),
            0xac => {} // SHMSel: there are none; reads say so
            _ => guest_warn!("{}: write of read-only or unknown register {offset:#x}", self.name),
        }
    }
}
