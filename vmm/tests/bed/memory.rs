//! The bed's memory part: lithe's memory hotplug controller on the bed's MMIO
//! bus, lithe's `MemoryHotplug` with a real memory map (`GuestMemoryAtomic`)
//! and real KVM memory slots, and the model guest's side of the memory AML
//! (`\_SB_.MHPC`): it reads `_STA` and `_CRS`, answers `_OST`, calls `_EJ0`,
//! as Linux's `acpi_memhotplug` does, with behaviour scripted per step.
//!
//! What the interpreter (`aml` 0.16) cannot run, and what stands in for it:
//! * `MTFY` calls `Notify`: as for the CPUs' `CTFY`, its body is replaced by
//!   a stand-in that queues the notification.
//! * `Acquire`/`Release` of `MLCK`: each is overwritten in place by `Noop`s
//!   (same length, so no package length changes). The bed runs the AML on
//!   one thread; [`install_notify`] checks that every method that selects a
//!   slot held the lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aml::value::MethodCode;
use aml::{AmlContext, AmlName, AmlValue};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion};

use devices::ged::Ged;
use devices::mem_hotplug::{MemHotplugController, MMIO_LEN};
use devices::{Bus, EventFdTrigger};
use vmm::acpi::mem_aml::mem_device_name;
use vmm::config::DevicesConfig;
use vmm::counters::Latencies;
use vmm::cpu::clock::ManualClock;
use vmm::device_manager::{DeviceManager, WorkerInit};
use vmm::memory::{self, GuestMemory as LitheMemory, MEM_HOTPLUG_MMIO_BASE};
use vmm::memory_hotplug::layout::{Area, BLOCK};
use vmm::memory_hotplug::slots::{SlotPhase, SlotState, Slots};
use vmm::memory_hotplug::wait::MemoryPlan;
use vmm::memory_hotplug::{MemoryHotplug, MemoryResizeError, Parts};

use super::{int, name, OnAdd, OnEject};

/// Boot RAM of a bed VM (the vCPUs' code lives in it).
pub const BOOT: u64 = 4 << 20;

/// lithe's memory hotplug as the bed's VM has it.
pub struct MemPart {
    pub hotplug: MemoryHotplug,
    pub slots: Arc<Slots>,
    pub controller: Arc<MemHotplugController>,
    /// The memory map device threads read.
    pub map: GuestMemoryAtomic<LitheMemory>,
    pub latencies: Arc<Latencies>,
    /// What lithe reports (`config.memory.size`), updated as `Vmm` does.
    pub size: u64,
    notes: Arc<Mutex<Vec<(u32, u32)>>>,
}

/// The guest's memory: what it does with notifications, what it has.
#[derive(Debug)]
pub struct ModelMemory {
    pub on_add: OnAdd,
    pub on_eject: OnEject,
    /// Slots the guest added (acknowledged, not ejected): (base, len).
    pub has: BTreeMap<usize, (u64, u64)>,
    pub deferred: Vec<usize>,
}

impl Default for ModelMemory {
    fn default() -> Self {
        ModelMemory { on_add: OnAdd::Online, on_eject: OnEject::Eject, has: BTreeMap::new(), deferred: Vec::new() }
    }
}

impl ModelMemory {
    /// RAM the guest has: the boot RAM and its slots.
    pub fn total(&self) -> u64 {
        BOOT + self.has.values().map(|r| r.1).sum::<u64>()
    }
}

/// Builds the memory part before the bed's MMIO bus is frozen: the
/// controller goes on `mmio`, the (empty) device manager takes its place.
pub struct Pending {
    slots: Arc<Slots>,
    controller: Arc<MemHotplugController>,
    map: GuestMemoryAtomic<LitheMemory>,
    devices: Arc<DeviceManager>,
    count: usize,
}

pub fn prepare(
    count: usize,
    vm: &VmFd,
    mem: &LitheMemory,
    mmio: &mut Bus,
    wake: &vmm_sys_util::eventfd::EventFd,
) -> Pending {
    let slots = Arc::new(Slots::new(count, wake.try_clone().unwrap()));
    let controller = Arc::new(MemHotplugController::new(slots.clone(), count));
    mmio.insert(MEM_HOTPLUG_MMIO_BASE, MMIO_LEN, controller.clone()).unwrap();
    let map = GuestMemoryAtomic::new(mem.clone());
    let devices =
        Arc::new(DeviceManager::new(&DevicesConfig::default(), vm, &map, mmio, &WorkerInit::default()).unwrap());
    Pending { slots, controller, map, devices, count }
}

impl Pending {
    pub fn finish(self, vm: &Arc<VmFd>, ged: &Arc<Ged<EventFdTrigger>>, clock: &Arc<ManualClock>) -> MemPart {
        let latencies = Arc::new(Latencies::default());
        let hotplug = MemoryHotplug::new(Parts {
            boot_size: BOOT,
            area: Area::new(BOOT, self.count as u64 * BLOCK),
            slots: self.slots.clone(),
            controller: self.controller.clone(),
            ged: ged.clone(),
            vm_fd: vm.clone(),
            memory: self.map.clone(),
            shared: false,
            devices: self.devices,
            eject_timeout: super::TIMEOUT,
            latencies: latencies.clone(),
            clock: clock.clone(),
        });
        MemPart {
            hotplug,
            slots: self.slots,
            controller: self.controller,
            map: self.map,
            latencies,
            size: BOOT,
            notes: Arc::default(),
        }
    }
}

/// Puts the `MTFY` stand-in into the loaded DSDT.
pub fn install_notify(aml: &mut AmlContext, part: &MemPart) {
    use acpi_tables::aml::{Arg, MethodCall, Path, Store};
    use acpi_tables::Aml;
    aml.namespace.add_value(name("\\MNID"), int(0)).unwrap();
    aml.namespace.add_value(name("\\MNEV"), int(0)).unwrap();
    let sink = part.notes.clone();
    let mnfy = AmlValue::native_method(0, false, 0, move |ctx| {
        let id = ctx.namespace.get_by_path(&name("\\MNID"))?.as_integer(ctx)?;
        let ev = ctx.namespace.get_by_path(&name("\\MNEV"))?.as_integer(ctx)?;
        sink.lock().unwrap().push((id as u32, ev as u32));
        Ok(int(0))
    });
    aml.namespace.add_value(name("\\MNFY"), mnfy).unwrap();
    let mut body = Vec::new();
    Store::new(&Path::new("\\MNID"), &Arg(0)).to_aml_bytes(&mut body);
    Store::new(&Path::new("\\MNEV"), &Arg(1)).to_aml_bytes(&mut body);
    MethodCall::new("\\MNFY".into(), vec![]).to_aml_bytes(&mut body);
    match aml.namespace.get_by_path_mut(&name("\\_SB_.MHPC.MTFY")).unwrap() {
        AmlValue::Method { code, .. } => *code = MethodCode::Aml(body),
        other => panic!("MTFY is not a method: {other:?}"),
    }
    for method in ["MSCN", "MRST", "MCRS", "MOST", "MEJ0"] {
        match aml.namespace.get_by_path_mut(&name(&format!("\\_SB_.MHPC.{method}"))).unwrap() {
            AmlValue::Method { code: MethodCode::Aml(code), .. } => {
                let (acquired, released) = unlock(code);
                assert_eq!((acquired, released), (1, 1), "{method}: one Acquire and one Release of MLCK");
            }
            other => panic!("{method} is not an AML method: {other:?}"),
        }
    }
}

/// Overwrites `Acquire(MLCK, t)` and `Release(MLCK)` with `Noop`s; how many of each.
fn unlock(code: &mut [u8]) -> (usize, usize) {
    const NOOP: u8 = 0xa3;
    let (mut acquired, mut released, mut i) = (0, 0, 0);
    while i + 6 <= code.len() {
        let op = &code[i..];
        if op[0] == 0x5b && &op[2..6] == b"MLCK" && op[1] == 0x23 && op.len() >= 8 {
            code[i..i + 8].fill(NOOP);
            acquired += 1;
            i += 8;
        } else if op[0] == 0x5b && &op[2..6] == b"MLCK" && op[1] == 0x27 {
            code[i..i + 6].fill(NOOP);
            released += 1;
            i += 6;
        } else {
            i += 1;
        }
    }
    (acquired, released)
}

pub fn slot_path(i: usize, method: &str) -> AmlName {
    name(&format!("\\_SB_.MHPC.{}.{method}", mem_device_name(i)))
}

impl MemPart {
    pub fn take_notes(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut *self.notes.lock().unwrap())
    }

    /// A `desired_ram` resize, as the API's `Vmm::resize_memory` makes it.
    pub fn resize(&mut self, desired: u64) -> Result<MemoryPlan, MemoryResizeError> {
        self.hotplug.resize(desired, Instant::now())
    }

    /// What `Vmm` does when woken: act on the guest's answers, and follow
    /// the RAM it has in the reported size.
    pub fn on_guest_events(&mut self) {
        if let Some(size) = self.hotplug.on_guest_events(self.size) {
            self.size = size;
        }
    }

    pub fn states(&self) -> Vec<SlotState> {
        (0..self.slots.len()).map(|i| self.slots.state(i)).collect()
    }

    /// The ranges in the memory map device threads read now, boot RAM included.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        self.map.memory().iter().map(|r| (r.start_addr().0, r.len())).collect()
    }

    /// Invariants that hold after every step.
    pub fn check_always(&self) {
        let mut want = vec![(0, BOOT)];
        for i in 0..self.slots.len() {
            let s = self.slots.state(i);
            assert!(
                !matches!(s.phase, SlotPhase::Failed | SlotPhase::Ejected),
                "slot {i}: {s:?} left for the main loop after it ran"
            );
            if s.phase.present() {
                want.push(self.slots.range(i));
            }
        }
        want.sort_unstable();
        assert_eq!(self.mapped(), want, "the memory map vs the slots lithe offers: {:?}", self.states());
        assert_eq!(self.size, self.hotplug.plugged_size(), "reported size vs what lithe counts");
    }

    /// Once settled: lithe counts exactly what the guest has, and says so.
    pub fn check_settled(&self, guest: &ModelMemory) {
        self.check_always();
        let lithe: BTreeMap<usize, (u64, u64)> = (0..self.slots.len())
            .filter(|&i| self.slots.state(i).guest_has())
            .map(|i| (i, self.slots.range(i)))
            .collect();
        assert_eq!(lithe, guest.has, "slots lithe counts vs the guest's: {:?}", self.states());
        assert_eq!(self.size, guest.total(), "reported memory.size vs the guest's MemTotal");
    }
}

/// The guest side, through the AML. Each returns whether the guest acted.
pub struct GuestSide<'a> {
    pub aml: &'a mut AmlContext,
    pub part: &'a MemPart,
    pub guest: &'a mut ModelMemory,
}

impl GuestSide<'_> {
    fn call(&mut self, path: AmlName, args: Vec<AmlValue>) -> AmlValue {
        self.aml
            .invoke_method(&path, aml::value::Args::from_list(args).unwrap())
            .unwrap_or_else(|e| panic!("AML {path}: {e:?}"))
    }

    fn sta(&mut self, i: usize) -> u64 {
        let v = self.call(slot_path(i, "_STA"), vec![]);
        v.as_integer(self.aml).unwrap()
    }

    /// `_CRS`: (base, len) from the QWord memory descriptor.
    fn crs(&mut self, i: usize) -> (u64, u64) {
        let v = self.call(slot_path(i, "_CRS"), vec![]);
        let b = v.as_buffer(self.aml).unwrap().lock().clone();
        let q = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let (min, max, len) = (q(14), q(22), q(38));
        assert_eq!(b[0], 0x8a, "slot {i}: _CRS is a QWord address space descriptor");
        assert_eq!(max, min + len - 1, "slot {i}: _CRS maximum");
        (min, len)
    }

    fn ost(&mut self, i: usize, event: u64, status: u64) {
        self.call(slot_path(i, "_OST"), vec![int(event), int(status), int(0)]);
    }

    fn ej0(&mut self, i: usize) {
        self.call(slot_path(i, "_EJ0"), vec![int(1)]);
        assert_eq!(self.sta(i), 0, "slot {i}: _STA after _EJ0 still says present");
        self.guest.has.remove(&i);
    }

    fn eject(&mut self, i: usize) {
        self.ost(i, 3, 0x84);
        self.ej0(i);
        self.ost(i, 3, 0);
    }

    pub fn notified(&mut self, i: usize, event: u32) {
        assert!(i < self.part.slots.len(), "Notify for slot {i} beyond {}", self.part.slots.len());
        match event {
            1 => self.device_check(i),
            3 => self.eject_request(i),
            e => panic!("slot {i}: unexpected Notify value {e}"),
        }
    }

    fn device_check(&mut self, i: usize) {
        if self.sta(i) != 0xf || self.guest.has.contains_key(&i) {
            return;
        }
        let range = self.crs(i);
        assert_eq!(range, self.part.slots.range(i), "slot {i}: _CRS vs the slot lithe filled");
        assert_eq!(range.1 % BLOCK, 0, "slot {i}: whole blocks");
        match self.guest.on_add {
            OnAdd::Online | OnAdd::AckOnly => {
                self.guest.has.insert(i, range);
                self.ost(i, 1, 0);
            }
            OnAdd::Fail => self.ost(i, 1, 1),
            OnAdd::Ignore => {}
        }
    }

    fn eject_request(&mut self, i: usize) {
        if self.sta(i) & 1 == 0 {
            return;
        }
        if !self.guest.has.contains_key(&i) {
            // Memory it never added: nothing to offline.
            self.eject(i);
            return;
        }
        match self.guest.on_eject {
            OnEject::Eject => self.eject(i),
            OnEject::Refuse => self.ost(i, 3, 0x80),
            OnEject::Ignore => {}
            OnEject::Defer => self.guest.deferred.push(i),
        }
    }

    /// Ejects what the guest put off, late.
    pub fn eject_deferred(&mut self) {
        for i in std::mem::take(&mut self.guest.deferred) {
            if self.guest.has.contains_key(&i) && self.sta(i) & 1 != 0 {
                self.eject(i);
            }
        }
    }

    /// An administrator in the guest ejects slot `i` (sysfs `eject`).
    pub fn ejects_on_its_own(&mut self, i: usize) {
        if self.guest.has.contains_key(&i) {
            self.ost(i, 0x103, 0x84);
            self.ej0(i);
            self.ost(i, 0x103, 0);
        }
    }
}

/// Mappings of this process of exactly `len` bytes at `addr`, from /proc/self/maps.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| {
        let range = l.split_whitespace().next().unwrap_or("");
        let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
        let (a, b) = (u64::from_str_radix(a, 16).unwrap_or(0), u64::from_str_radix(b, 16).unwrap_or(0));
        a <= addr && addr + len <= b
    })
}

/// Host address of the region at guest address `base` in `map`'s snapshot.
pub fn host_address(map: &LitheMemory, base: u64) -> u64 {
    map.get_host_address(GuestAddress(base)).unwrap() as u64
}

/// The bound a test waits for a reader thread.
pub const READER_WAIT: Duration = Duration::from_secs(10);

// Keeps `memory` (used by the harness) referenced.
#[allow(unused_imports)]
use memory as _;
