//! Memory hotplug through ACPI: `desired_ram` grows the guest's RAM by
//! adding slots of whole 128 MiB blocks (and shrinks it by asking the guest
//! to eject whole slots, the latest first), each a region of its own (from a
//! memfd of its own when `memory.shared`), in a KVM memory slot of its own,
//! published in the memory map device threads read, then announced through
//! the memory hotplug controller and the GED. The guest's `_OST` says it
//! took the memory ([`slots`]); only then does `memory.size` count it.
//!
//! Unplugging (an eject, a failed or withdrawn add) is the vCPU table's idea
//! applied to memory: only once the guest has let go (`_EJ0`), the region
//! leaves KVM, then the memory map; device threads hold snapshots of the
//! map (`GuestMemoryAtomic`), each holding its regions, so the mapping goes
//! only when the last reader lets go of it: the reference counts are the
//! grace period. A guest that refuses (`_OST` failure) or does not answer
//! in time keeps the slot, and `vm.info` says why.

pub mod layout;
pub mod slots;
pub mod wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use log::{info, warn};
use vm_memory::{FileOffset, GuestAddress, GuestAddressSpace, GuestRegionMmap};

use devices::ged::{Ged, GED_EVENT_MEM_HOTPLUG};
use devices::mem_hotplug::MemHotplugController;
use devices::virtio::GuestMemoryHandle;
use devices::EventFdTrigger;

use layout::{Area, BLOCK};
use slots::{SlotEvent, SlotPhase, SlotReason, Slots};

use crate::counters::Latencies;
use crate::cpu::clock::Clock;

/// Most slots a VM gets: each resize that grows takes one, and every slot
/// is a device the guest's AML walks on each memory event.
pub const MAX_SLOTS: usize = 16;
/// KVM memory slot of hotplug slot 0 (boot RAM takes the first few).
const KVM_SLOT_BASE: u32 = 16;

/// Why `desired_ram` cannot be had; each names the field and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryResizeError {
    #[error("desired_ram={desired}: the VM was created without room for more memory (memory.hotplug_size)")]
    NoCapacity { desired: u64 },
    #[error("desired_ram={desired}: the change from {current} bytes must be whole blocks of 128 MiB")]
    Unaligned { desired: u64, current: u64 },
    #[error("desired_ram={desired}: more than memory.size plus memory.hotplug_size, {max} bytes")]
    TooLarge { desired: u64, max: u64 },
    #[error("desired_ram={desired}: below the {boot} bytes the VM booted with, which cannot be removed")]
    BelowBoot { desired: u64, boot: u64 },
    #[error("desired_ram={desired}: memory goes in whole slots, the latest first; from {current} bytes the sizes reachable are {reachable:?}")]
    NotReachable { desired: u64, current: u64, reachable: Vec<u64> },
    #[error("desired_ram={desired}: all {slots} memory slots are in use")]
    NoSlot { desired: u64, slots: usize },
    #[error("desired_ram: {0}")]
    Failed(String),
}

impl MemoryResizeError {
    /// The VMM failed, not the request.
    pub fn is_vmm(&self) -> bool {
        matches!(self, MemoryResizeError::Failed(_))
    }
}

pub struct MemoryHotplug {
    boot_size: u64,
    area: Area,
    slots: Arc<Slots>,
    controller: Arc<MemHotplugController>,
    ged: Arc<Ged<EventFdTrigger>>,
    vm_fd: Arc<VmFd>,
    memory: GuestMemoryHandle,
    shared: bool,
    devices: Arc<crate::device_manager::DeviceManager>,
    regions: Vec<Option<Arc<GuestRegionMmap>>>,
    /// Per slot being removed: when the request lapses.
    deadlines: Vec<Option<Instant>>,
    /// Per slot offered: when an offer the guest never looked at is taken back.
    add_deadlines: Vec<Option<Instant>>,
    /// How long the guest gets to eject (the vCPUs' `eject_timeout_ms`).
    timeout: Duration,
    latencies: Arc<Latencies>,
    clock: Arc<dyn Clock>,
    /// Each slot's state when [`MemoryHotplug::take_moved`] last looked.
    seen: Vec<slots::SlotState>,
}

/// What [`MemoryHotplug::new`] needs from the VM being built.
pub struct Parts {
    pub boot_size: u64,
    pub area: Area,
    pub slots: Arc<Slots>,
    pub controller: Arc<MemHotplugController>,
    pub ged: Arc<Ged<EventFdTrigger>>,
    pub vm_fd: Arc<VmFd>,
    pub memory: GuestMemoryHandle,
    pub shared: bool,
    /// The virtio devices: vhost-user backends map each region themselves.
    pub devices: Arc<crate::device_manager::DeviceManager>,
    pub eject_timeout: Duration,
    /// lithe's own share of each change: request → GED, `_EJ0` → unplugged.
    pub latencies: Arc<Latencies>,
    /// For the eject deadlines (the vCPU manager's clock).
    pub clock: Arc<dyn Clock>,
}

/// How many slots a VM with `capacity` bytes of hotplug room gets.
pub fn slot_count(capacity: u64) -> usize {
    ((capacity / BLOCK) as usize).min(MAX_SLOTS)
}

impl MemoryHotplug {
    pub fn new(p: Parts) -> MemoryHotplug {
        let n = p.slots.len();
        MemoryHotplug {
            boot_size: p.boot_size,
            area: p.area,
            slots: p.slots,
            controller: p.controller,
            ged: p.ged,
            vm_fd: p.vm_fd,
            memory: p.memory,
            shared: p.shared,
            devices: p.devices,
            regions: vec![None; n],
            deadlines: vec![None; n],
            add_deadlines: vec![None; n],
            timeout: p.eject_timeout,
            latencies: p.latencies,
            clock: p.clock,
            seen: vec![slots::SlotState::FREE; n],
        }
    }

    fn sum(&self, counts: impl Fn(SlotPhase) -> bool) -> u64 {
        (0..self.slots.len()).filter(|&i| counts(self.slots.phase(i))).map(|i| self.slots.range(i).1).sum()
    }

    /// RAM the guest has taken: the boot RAM and every slot it acknowledged
    /// and has not given back.
    pub fn plugged_size(&self) -> u64 {
        self.boot_size + self.slots.plugged_bytes()
    }

    /// RAM asked of the guest: what it has or is offered, less what it is
    /// asked to give back.
    pub fn planned_size(&self) -> u64 {
        self.boot_size + self.sum(|p| matches!(p, SlotPhase::Plugged | SlotPhase::Adding))
    }

    /// The slots a shrink may take, the latest (highest) first.
    fn removable(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots.phase(i), SlotPhase::Plugged | SlotPhase::Adding))
            .collect();
        v.sort_by_key(|&i| std::cmp::Reverse(self.slots.range(i).0));
        v
    }

    /// Shrinks to `desired` by whole slots, the latest first.
    fn shrink(&mut self, desired: u64, current: u64, received: Instant) -> Result<Vec<usize>, MemoryResizeError> {
        if desired < self.boot_size {
            return Err(MemoryResizeError::BelowBoot { desired, boot: self.boot_size });
        }
        let (mut left, mut take, mut reachable) = (current, Vec::new(), Vec::new());
        for i in self.removable() {
            if left == desired {
                break;
            }
            left -= self.slots.range(i).1;
            reachable.push(left);
            take.push(i);
        }
        if left != desired {
            return Err(MemoryResizeError::NotReachable { desired, current, reachable });
        }
        let mut asked = 0;
        for &i in &take {
            asked += usize::from(self.remove(i));
        }
        if asked > 0 {
            self.latencies.memory_notified(received.elapsed(), 0, asked);
        }
        Ok(take)
    }

    /// Asks the guest to give slot `i` back (true), or takes back an offer
    /// it has not looked at yet.
    fn remove(&mut self, i: usize) -> bool {
        if self.slots.phase(i) == SlotPhase::Adding
            && self.controller.withdraw_insert(i)
            && self.slots.apply(i, SlotEvent::AddWithdrawn).is_some()
        {
            self.unplug(i);
            return false;
        }
        if self.slots.apply(i, SlotEvent::Remove).is_none() {
            return false;
        }
        let (base, len) = self.slots.range(i);
        info!("memory: slot {i} ({} MiB at {base:#x}): the guest is asked to eject it", len >> 20);
        self.deadlines[i] = Some(self.clock.now() + self.timeout);
        self.controller.request_remove(i);
        if let Err(e) = self.ged.notify(GED_EVENT_MEM_HOTPLUG) {
            warn!("memory slot {i}: cannot raise the GED interrupt: {e}");
        }
        true
    }

    /// Whether an offer or a removal waits on a deadline (the main loop
    /// ticks only while something does).
    pub fn needs_tick(&self) -> bool {
        self.deadlines.iter().chain(&self.add_deadlines).any(Option::is_some)
    }

    /// Main loop, periodic: a removal the guest has not done in time is
    /// rolled back (it still has the memory), and an offer the guest never
    /// looked at is taken back (it never had it).
    pub fn tick(&mut self) {
        let now = self.clock.now();
        for i in 0..self.slots.len() {
            if self.add_deadlines[i].is_some_and(|d| now >= d) {
                self.add_deadlines[i] = None;
                // Only an offer still pending: one the guest scanned may be
                // in use even unanswered, so it stays offered.
                if self.slots.phase(i) == SlotPhase::Adding
                    && self.controller.withdraw_insert(i)
                    && self.slots.apply(i, SlotEvent::AddTimedOut).is_some()
                {
                    warn!("memory slot {i}: the guest did not look at the offer within {:?}; taken back", self.timeout);
                }
            }
            if self.deadlines[i].is_some_and(|d| now >= d) {
                self.deadlines[i] = None;
                self.controller.cancel(i);
                if let Some(t) = self.slots.apply(i, SlotEvent::EjectTimedOut) {
                    warn!("memory slot {i}: no eject within {:?}; it stays {:?}", self.timeout, t.to.phase);
                }
            }
        }
    }

    /// Sets the target: grows by one slot of the difference, or shrinks by
    /// whole slots. `received`: when the request arrived (for lithe's share).
    /// The plan: which slots it offers and asks back, for a client that waits.
    pub fn resize(&mut self, desired: u64, received: Instant) -> Result<wait::MemoryPlan, MemoryResizeError> {
        let current = self.planned_size();
        if self.area.capacity == 0 {
            return Err(MemoryResizeError::NoCapacity { desired });
        }
        if desired == current {
            // Nothing to set in motion; a wait still waits for slots under way.
            let pending = (0..self.slots.len()).filter(|&i| self.slots.phase(i) == SlotPhase::Adding).collect();
            return Ok(wait::MemoryPlan::new(&self.slots, desired, pending, Vec::new()));
        }
        if desired < current {
            let removes = self.shrink(desired, current, received)?;
            return Ok(wait::MemoryPlan::new(&self.slots, desired, Vec::new(), removes));
        }
        let grow = desired - current;
        if !grow.is_multiple_of(BLOCK) {
            return Err(MemoryResizeError::Unaligned { desired, current });
        }
        let max = self.boot_size + self.area.capacity;
        if desired > max {
            return Err(MemoryResizeError::TooLarge { desired, max });
        }
        let Some(i) = (0..self.slots.len()).find(|&i| self.slots.phase(i) == SlotPhase::Free) else {
            return Err(MemoryResizeError::NoSlot { desired, slots: self.slots.len() });
        };
        let used: Vec<(u64, u64)> = (0..self.slots.len())
            .filter(|&j| self.slots.phase(j) != SlotPhase::Free)
            .map(|j| self.slots.range(j))
            .collect();
        let base = self.area.place(&used, grow).ok_or(MemoryResizeError::TooLarge { desired, max })?;
        self.add(i, base, grow).map_err(MemoryResizeError::Failed)?;
        self.latencies.memory_notified(received.elapsed(), 1, 0);
        info!("memory: slot {i} offered to the guest: {} MiB at {base:#x} (target {} MiB)", grow >> 20, desired >> 20);
        Ok(wait::MemoryPlan::new(&self.slots, desired, vec![i], Vec::new()))
    }

    /// Maps, registers and publishes slot `i`'s region, then tells the guest.
    fn add(&mut self, i: usize, base: u64, len: u64) -> Result<(), String> {
        let file = if self.shared {
            let f = crate::memory::memfd(&format!("lithe-hotplug-{i}"), len).map_err(|e| format!("memfd: {e}"))?;
            Some(FileOffset::from_arc(f, 0))
        } else {
            None
        };
        let region = GuestRegionMmap::from_range(GuestAddress(base), len as usize, file)
            .map_err(|e| format!("mapping {len} bytes: {e}"))?;
        let region = Arc::new(region);
        let slot = KVM_SLOT_BASE + i as u32;
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: base,
            memory_size: len,
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        let t = Instant::now();
        // SAFETY: the mapping is owned by `region`, which this struct keeps
        // (and the published memory map holds) until the slot is deleted
        // from KVM again in `unplug`, or the VM is gone.
        unsafe { self.vm_fd.set_user_memory_region(r) }.map_err(|e| format!("KVM memory slot {slot}: {e}"))?;
        self.latencies.kvm_slot_changed(t.elapsed(), true);
        if let Err(e) = self.publish(|m| m.insert_region(region.clone()).map_err(|e| e.to_string())) {
            self.delete_kvm_slot(i, base);
            return Err(format!("publishing the memory map: {e}"));
        }
        // vhost-user backends map it before the guest may hand them buffers there.
        if let Err(e) = self.devices.memory_changed(&region, true) {
            let _ = self
                .publish(|m| m.remove_region(GuestAddress(base), len).map(|(next, _)| next).map_err(|e| e.to_string()));
            self.delete_kvm_slot(i, base);
            return Err(e);
        }
        self.regions[i] = Some(region);
        self.slots.set_range(i, base, len);
        self.slots.apply(i, SlotEvent::Add);
        self.add_deadlines[i] = Some(self.clock.now() + self.timeout);
        self.controller.request_insert(i);
        if let Err(e) = self.ged.notify(GED_EVENT_MEM_HOTPLUG) {
            warn!("memory slot {i}: cannot raise the GED interrupt: {e}");
        }
        Ok(())
    }

    /// Replaces the memory map device threads read with `change(current)`.
    fn publish(
        &self,
        change: impl FnOnce(&vm_memory::GuestMemoryMmap) -> Result<vm_memory::GuestMemoryMmap, String>,
    ) -> Result<(), String> {
        let guard = self.memory.lock().map_err(|_| "the memory map's lock is poisoned".to_string())?;
        let next = change(&self.memory.memory())?;
        guard.replace(next);
        Ok(())
    }

    fn delete_kvm_slot(&self, i: usize, base: u64) {
        let slot = KVM_SLOT_BASE + i as u32;
        let r =
            kvm_userspace_memory_region { slot, guest_phys_addr: base, memory_size: 0, userspace_addr: 0, flags: 0 };
        let t = Instant::now();
        // SAFETY: a zero-sized region deletes the slot; KVM keeps no address.
        let done = unsafe { self.vm_fd.set_user_memory_region(r) };
        self.latencies.kvm_slot_changed(t.elapsed(), false);
        if let Err(e) = done {
            warn!("memory slot {i}: deleting KVM memory slot {slot}: {e}");
        }
    }

    /// Takes slot `i` out: KVM first (no vCPU can reach it), then the memory
    /// map; the mapping itself goes with the last snapshot that holds it.
    fn unplug(&mut self, i: usize) {
        let (base, len) = self.slots.range(i);
        self.controller.cancel(i);
        self.delete_kvm_slot(i, base);
        if let Err(e) =
            self.publish(|m| m.remove_region(GuestAddress(base), len).map(|(next, _)| next).map_err(|e| e.to_string()))
        {
            warn!("memory slot {i}: taking it out of the memory map: {e}");
        }
        if let Some(region) = self.regions[i].take() {
            if let Err(e) = self.devices.memory_changed(&region, false) {
                warn!("memory slot {i}: {e}");
            }
        }
        let why = self.slots.reason(i);
        let ejected = self.slots.phase(i) == SlotPhase::Ejected;
        self.slots.apply(i, SlotEvent::Unplugged);
        if ejected {
            self.latencies.memory_unplugged(self.slots.ejected_at(i).map(|t| t.elapsed()));
        }
        info!("memory slot {i}: {} MiB at {base:#x} unplugged ({why:?})", len >> 20);
    }

    /// Acts on what the guest did (woken by the hotplug eventfd). Returns
    /// the RAM the guest has when that changed.
    pub fn on_guest_events(&mut self, last_size: u64) -> Option<u64> {
        for i in 0..self.slots.len() {
            let state = self.slots.state(i);
            if state.phase != SlotPhase::Adding {
                self.add_deadlines[i] = None;
            }
            match state.phase {
                SlotPhase::Failed | SlotPhase::Ejected => {
                    self.deadlines[i] = None;
                    self.unplug(i);
                }
                // Asked to eject, and no longer removing: the guest refused.
                _ if state.phase != SlotPhase::Removing && self.deadlines[i].take().is_some() => {
                    self.controller.cancel(i);
                    if state.reason == SlotReason::EjectRefused {
                        warn!("memory slot {i}: the guest refused the eject; it keeps the memory");
                    }
                }
                _ => {}
            }
        }
        let now = self.plugged_size();
        (now != last_size).then_some(now)
    }

    /// Whether any slot moved (the guest's answers, rollbacks, unplugs)
    /// since the last call: a resize waiting on the guest then looks again.
    pub fn take_moved(&mut self) -> bool {
        let mut moved = false;
        for (i, seen) in self.seen.iter_mut().enumerate() {
            let now = self.slots.state(i);
            moved |= now != *seen;
            *seen = now;
        }
        moved
    }

    /// The slots, shared with `vm.info`.
    pub fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }
}
