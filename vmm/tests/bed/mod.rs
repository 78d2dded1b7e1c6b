//! The in-process hotplug test bed: lithe's real DSDT, run by an AML
//! interpreter (rust-osdev's `aml`) whose SystemMemory accesses go to lithe's
//! real MMIO bus (CPU hotplug controller, GED), against the real vCPU
//! manager, vCPU table and KVM vCPUs. A [`ModelGuest`] plays Linux's part
//! through that AML, with behaviour scripted per step. No guest kernel: a
//! step takes microseconds to milliseconds.
//!
//! What the interpreter cannot run, and what stands in for it:
//! * `Notify` (not implemented by `aml` 0.16): `CTFY`'s body is replaced by a
//!   three-line method that stores its arguments and calls a native method,
//!   which queues the notification for the model guest. The real `CTFY`
//!   dispatch tree is tested on its own in `ctfy_dispatches_every_id`.
//! * Starting a CPU is real: vCPU 0 runs a few bytes of firmware (below)
//!   that waits on a doorbell port and sends INIT/SIPI through its x2APIC to
//!   the vCPU the model guest names; the AP runs real-mode code that reads a
//!   port (which a test can make block, to get a vCPU thread that will not
//!   stop) and halts. The vCPU thread sees its MP state leave wait-for-SIPI,
//!   exactly as with Linux.

#![allow(dead_code)]

pub mod memory;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aml::value::{Args, MethodCode};
use aml::{AmlContext, AmlName, AmlValue, DebugVerbosity, Handler};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use devices::cpu_hotplug::CpuHotplugController;
use devices::ged::Ged;
use devices::{Bus, EventFdTrigger};
use vmm::acpi;
use vmm::arch::regs;
use vmm::arch::topology::Topology;
use vmm::config::CpusConfig;
use vmm::cpu::clock::ManualClock;
use vmm::cpu::hotplug_host::HotplugHost;
use vmm::cpu::manager::{ResizePlan, VcpuManager, STOP_LIMIT};
use vmm::cpu::vcpu::{install_kick_handler, VcpuHandle};
use vmm::cpu::{Phase, State, VcpuTable};
use vmm::exit::ExitNotifier;
use vmm::hotplug::{HotplugStack, VcpuParts};
use vmm::memory as memory_consts;
use vmm::resize::{self, ResizeError, Want};

/// One bed at a time per process: thread counts are process-wide.
static ONE_BED: Mutex<()> = Mutex::new(());

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// PIO port of the doorbell: vCPU 0 reads it for the next vCPU to start.
const DOORBELL_PORT: u64 = 0x98;
/// PIO port a started AP reads once (blocks while the test holds it).
const BLOCKER_PORT: u64 = 0x9c;
/// SIPI vector: the AP starts in real mode at `vector << 12`.
const SIPI_VECTOR: u8 = 0x10;

/// vCPU 0's firmware, 64-bit: switch its LAPIC to x2APIC mode, then loop:
/// read the doorbell (0: nothing; else vCPU id + 1) and send that vCPU
/// INIT and SIPI through the x2APIC ICR.
const BSP_CODE: &[u8] = &[
    0xb9,
    0x1b,
    0x00,
    0x00,
    0x00, // mov ecx, IA32_APIC_BASE
    0x0f,
    0x32, // rdmsr
    0x0d,
    0x00,
    0x0c,
    0x00,
    0x00, // or eax, EN | EXTD
    0x0f,
    0x30, // wrmsr
    // loop:
    0x66,
    0xba,
    0x98,
    0x00, // mov dx, DOORBELL_PORT
    0xed, // in eax, dx
    0x85,
    0xc0, // test eax, eax
    0x74,
    0xf7, // jz loop
    0x8d,
    0x50,
    0xff, // lea edx, [rax - 1]: destination APIC id
    0xb9,
    0x30,
    0x08,
    0x00,
    0x00, // mov ecx, x2APIC ICR
    0xb8,
    0x00,
    0x45,
    0x00,
    0x00, // mov eax, INIT | assert
    0x0f,
    0x30, // wrmsr
    0xb8,
    SIPI_VECTOR,
    0x46,
    0x00,
    0x00, // mov eax, SIPI | vector
    0x0f,
    0x30, // wrmsr
    0xeb,
    0xdf, // jmp loop
];

/// An AP's code, real mode at the SIPI vector: read the blocker port, halt.
const AP_CODE: &[u8] = &[
    0xba, 0x9c, 0x00, // mov dx, BLOCKER_PORT
    0xec, // in al, dx
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

/// vCPUs the model guest asks vCPU 0 to start.
#[derive(Default)]
struct Doorbell {
    queue: Mutex<std::collections::VecDeque<u32>>,
    rung: std::sync::Condvar,
}

impl devices::BusDevice for Doorbell {
    fn read(&self, _: u64, data: &mut [u8]) {
        // Waits a little, so vCPU 0 does not spin; then returns to KVM_RUN,
        // where a kick can reach the thread.
        let q = self.queue.lock().unwrap();
        let (mut q, _) = self.rung.wait_timeout_while(q, Duration::from_millis(5), |q| q.is_empty()).unwrap();
        let v = q.pop_front().map_or(0, |id| id + 1);
        data.fill(0);
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
    fn write(&self, _: u64, _: &[u8]) {}
}

/// A port that blocks the reading vCPU thread while held.
#[derive(Default)]
pub struct Blocker {
    held: Mutex<bool>,
    released: std::sync::Condvar,
    /// vCPU threads inside `read` right now.
    blocked: AtomicU64,
}

impl Blocker {
    pub fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }
    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }
    /// Waits until `n` vCPU threads are blocked in the port.
    pub fn wait_blocked(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.blocked.load(Ordering::Acquire) < n {
            assert!(std::time::Instant::now() < deadline, "no vCPU blocked in the port");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl devices::BusDevice for Blocker {
    fn read(&self, _: u64, data: &mut [u8]) {
        self.blocked.fetch_add(1, Ordering::AcqRel);
        let held = self.held.lock().unwrap();
        drop(self.released.wait_while(held, |h| *h).unwrap());
        self.blocked.fetch_sub(1, Ordering::AcqRel);
        data.fill(0);
    }
    fn write(&self, _: u64, _: &[u8]) {}
}

/// The memory hotplug controller's status and control byte.
const MEM_STATUS: u64 = memory_consts::MEM_HOTPLUG_MMIO_BASE + devices::mem_hotplug::REG_STATUS;

/// The AML's memory accesses, on lithe's MMIO bus, counted (each would be
/// one MMIO exit in a real guest). Only 32-bit field accesses are expected:
/// anything else is a bug in the AML and fails.
struct BusHandler(Arc<Bus>, Arc<AtomicU64>);

/// A handler for AML that must not touch hardware at all.
pub fn no_hardware() -> Box<dyn Handler> {
    Box::new(BusHandler(Arc::new(Bus::new()), Arc::default()))
}

/// `aml` 0.16 adds a field's offset in *bits* to its region's base address
/// (`AmlContext::read_region`/`write_region` get `field.offset` unscaled).
/// Undo that: lithe's regions (the GED's, and the CPU hotplug controller's
/// four) start on 0x200-byte boundaries, and in the bed (max ≤ 512, so at
/// most 16 words, 512 bits per region) a field's bit offset stays below
/// 0x200, so the region is the address rounded down to 0x200 and the byte
/// offset is the bit offset / 8.
fn unscale(address: usize) -> u64 {
    let base = address as u64 & !0x1ff;
    let bits = address as u64 - base;
    assert_eq!(bits % 8, 0, "AML access at {address:#x}: not a whole byte offset");
    base + bits / 8
}

impl Handler for BusHandler {
    fn read_u32(&self, address: usize) -> u32 {
        self.1.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 4];
        let a = unscale(address);
        assert!(self.0.read(a, &mut b), "AML read of unmapped MMIO {a:#x}");
        u32::from_le_bytes(b)
    }
    fn write_u32(&mut self, address: usize, value: u32) {
        self.1.fetch_add(1, Ordering::Relaxed);
        let a = unscale(address);
        assert!(self.0.write(a, &value.to_le_bytes()), "AML write of unmapped MMIO {a:#x}");
    }
    /// The memory hotplug controller's status byte is the one byte-wide
    /// register (its own one-byte region, so the address is not scaled).
    fn read_u8(&self, a: usize) -> u8 {
        assert_eq!(a as u64, MEM_STATUS, "AML: 8-bit read at {a:#x}");
        self.1.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 1];
        assert!(self.0.read(MEM_STATUS, &mut b), "AML read of unmapped MMIO {a:#x}");
        b[0]
    }
    fn read_u16(&self, a: usize) -> u16 {
        panic!("AML: 16-bit read at {a:#x}")
    }
    fn read_u64(&self, a: usize) -> u64 {
        panic!("AML: 64-bit read at {a:#x}")
    }
    fn write_u8(&mut self, a: usize, v: u8) {
        assert_eq!(a as u64, MEM_STATUS, "AML: 8-bit write at {a:#x}");
        self.1.fetch_add(1, Ordering::Relaxed);
        assert!(self.0.write(MEM_STATUS, &[v]), "AML write of unmapped MMIO {a:#x}");
    }
    fn write_u16(&mut self, a: usize, _: u16) {
        panic!("AML: 16-bit write at {a:#x}")
    }
    fn write_u64(&mut self, a: usize, _: u64) {
        panic!("AML: 64-bit write at {a:#x}")
    }
    fn read_io_u8(&self, p: u16) -> u8 {
        panic!("AML: port read {p:#x}")
    }
    fn read_io_u16(&self, p: u16) -> u16 {
        panic!("AML: port read {p:#x}")
    }
    fn read_io_u32(&self, p: u16) -> u32 {
        panic!("AML: port read {p:#x}")
    }
    fn write_io_u8(&self, p: u16, _: u8) {
        panic!("AML: port write {p:#x}")
    }
    fn write_io_u16(&self, p: u16, _: u16) {
        panic!("AML: port write {p:#x}")
    }
    fn write_io_u32(&self, p: u16, _: u32) {
        panic!("AML: port write {p:#x}")
    }
    fn read_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u8 {
        panic!("AML: PCI config read")
    }
    fn read_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u16 {
        panic!("AML: PCI config read")
    }
    fn read_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u32 {
        panic!("AML: PCI config read")
    }
    fn write_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u8) {
        panic!("AML: PCI config write")
    }
    fn write_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u16) {
        panic!("AML: PCI config write")
    }
    fn write_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u32) {
        panic!("AML: PCI config write")
    }
}

/// What the model guest does with a hot-add notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAdd {
    /// `_OST` success, then start the CPU (Linux with an auto-online rule).
    Online,
    /// `_OST` success, never start it (a distro guest without the rule).
    AckOnly,
    /// `_OST` failure.
    Fail,
    /// Do nothing.
    Ignore,
}

/// What the model guest does with an eject request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEject {
    /// `_OST(in progress)`, offline, `_EJ0`, `_OST(success)`: Linux.
    Eject,
    /// `_OST(not supported)`: Linux with processor hot-removal disabled.
    Refuse,
    /// Do nothing.
    Ignore,
    /// Remember it and eject later ([`ModelGuest::eject_deferred`]).
    Defer,
}

/// Linux's part, played through the DSDT's AML.
pub struct ModelGuest {
    pub on_add: OnAdd,
    pub on_eject: OnEject,
    /// The GED driver is unbound: interrupts are not handled at all.
    pub ignore_interrupts: bool,
    /// The CPUs the guest has (added, not ejected), by vCPU id.
    pub cpus: BTreeSet<u32>,
    /// The ones it started.
    pub started: BTreeSet<u32>,
    pub deferred: Vec<u32>,
    /// Its memory.
    pub memory: memory::ModelMemory,
}

pub struct Bed {
    pub manager: VcpuManager,
    pub table: Arc<VcpuTable<VcpuHandle>>,
    pub host: Arc<HotplugHost>,
    pub controller: Arc<CpuHotplugController>,
    pub clock: Arc<ManualClock>,
    pub guest: ModelGuest,
    pub max: u32,
    pub blocker: Arc<Blocker>,
    /// lithe's memory hotplug, in a bed built with slots.
    pub mem: Option<memory::MemPart>,
    doorbell: Arc<Doorbell>,
    aml: AmlContext,
    accesses: Arc<AtomicU64>,
    notes: Arc<Mutex<Vec<(u32, u32)>>>,
    ged: Arc<Ged<EventFdTrigger>>,
    /// GED interrupts the model guest has handled (or ignored).
    ged_seen: u64,
    wake: EventFd,
    pub vm: Arc<VmFd>,
    _memory: memory_consts::GuestMemory,
    _kvm: Kvm,
    _one: MutexGuard<'static, ()>,
}

pub(crate) fn name(s: &str) -> AmlName {
    AmlName::from_str(s).unwrap()
}

pub(crate) fn int(v: u64) -> AmlValue {
    AmlValue::Integer(v)
}

fn cpu_path(id: u32, method: &str) -> AmlName {
    name(&format!("\\_SB_.CPUS.{}.{method}", acpi::cpu_aml::cpu_device_name(id)))
}

/// `CTFY`'s stand-in: `Store(Arg0, \NTID) Store(Arg1, \NTEV) \NTFY()`.
fn ctfy_stand_in() -> Vec<u8> {
    use acpi_tables::aml::{Arg, MethodCall, Path, Store};
    use acpi_tables::Aml;
    let mut v = Vec::new();
    Store::new(&Path::new("\\NTID"), &Arg(0)).to_aml_bytes(&mut v);
    Store::new(&Path::new("\\NTEV"), &Arg(1)).to_aml_bytes(&mut v);
    MethodCall::new("\\NTFY".into(), vec![]).to_aml_bytes(&mut v);
    v
}

impl Bed {
    /// A VM with `boot` of `max` vCPUs running (vCPU 0 halted in a loop),
    /// its hotplug stack built by lithe's own constructor.
    pub fn new(boot: u32, max: u32) -> Bed {
        Bed::with_stop_limit(boot, max, STOP_LIMIT)
    }

    /// [`Bed::new`], with `stop_limit` for how long a vCPU thread gets to
    /// stop or pause: short only in tests whose thread is meant not to stop.
    pub fn with_stop_limit(boot: u32, max: u32, stop_limit: Duration) -> Bed {
        Bed::build(boot, max, stop_limit, 0)
    }

    /// [`Bed::new`] with `slots` memory hotplug slots (128 MiB each of room).
    pub fn with_memory(boot: u32, max: u32, slots: usize) -> Bed {
        Bed::build(boot, max, STOP_LIMIT, slots)
    }

    fn build(boot: u32, max: u32, stop_limit: Duration, mem_slots: usize) -> Bed {
        assert!(max <= 512, "unscale() holds for up to 16 bitmap words");
        let one = ONE_BED.lock().unwrap_or_else(|e| e.into_inner());
        install_kick_handler().unwrap();
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.set_tss_address(memory_consts::KVM_TSS_ADDR as usize).unwrap();
        let mut cpus = CpusConfig::new(boot, max);
        cpus.eject_timeout_ms = TIMEOUT.as_millis() as u64;
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut stack = HotplugStack::new(&vm, &cpus, &wake).expect("lithe's hotplug stack");
        let mem = memory_consts::create_guest_memory(memory::BOOT, false).unwrap();
        // SAFETY: the bed keeps `mem` until after the VM and its vCPUs are gone
        // (Drop stops the vCPUs; the fields drop in order).
        unsafe { memory_consts::register_guest_memory(&vm, &mem) }.unwrap();
        regs::write_boot_tables(&mem).unwrap();
        let entry = memory_consts::HIMEM_START;
        mem.write_slice(BSP_CODE, GuestAddress(entry)).unwrap();
        mem.write_slice(AP_CODE, GuestAddress(u64::from(SIPI_VECTOR) << 12)).unwrap();
        let doorbell = Arc::new(Doorbell::default());
        let blocker = Arc::new(Blocker::default());
        let mut pio = Bus::new();
        pio.insert(DOORBELL_PORT, 4, doorbell.clone()).unwrap();
        pio.insert(BLOCKER_PORT, 1, blocker.clone()).unwrap();

        let mem_pending = (mem_slots > 0).then(|| memory::prepare(mem_slots, &vm, &mem, &mut stack.mmio, &wake));
        let mmio = Arc::new(std::mem::take(&mut stack.mmio));
        let clock = Arc::new(ManualClock::default());
        let parts = VcpuParts {
            pio,
            mmio: mmio.clone(),
            exit: Arc::new(ExitNotifier::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            seccomp: None,
            clock: clock.clone(),
            stop_limit,
            latencies: Default::default(),
        };
        let mut manager = stack.manager(&kvm, &vm, &cpus, parts).expect("lithe's vCPU manager");
        manager.start_boot_vcpus(boot, entry).unwrap();
        let HotplugStack { table, host, controller, ged, .. } = stack;
        let mem_part = mem_pending.map(|p| p.finish(&vm, &ged, &clock));

        let accesses = Arc::new(AtomicU64::new(0));
        let mut aml = AmlContext::new(Box::new(BusHandler(mmio, accesses.clone())), DebugVerbosity::None);
        aml.parse_table(&acpi::dsdt_body(&Topology::flat(max), mem_slots)).expect("the interpreter loads lithe's DSDT");
        if let Some(part) = &mem_part {
            memory::install_notify(&mut aml, part);
        }
        let notes = Arc::new(Mutex::new(Vec::new()));
        aml.namespace.add_value(name("\\NTID"), int(0)).unwrap();
        aml.namespace.add_value(name("\\NTEV"), int(0)).unwrap();
        let sink = notes.clone();
        let ntfy = AmlValue::native_method(0, false, 0, move |ctx| {
            let id = ctx.namespace.get_by_path(&name("\\NTID"))?.as_integer(ctx)?;
            let ev = ctx.namespace.get_by_path(&name("\\NTEV"))?.as_integer(ctx)?;
            sink.lock().unwrap().push((id as u32, ev as u32));
            Ok(int(0))
        });
        aml.namespace.add_value(name("\\NTFY"), ntfy).unwrap();
        match aml.namespace.get_by_path_mut(&name("\\_SB_.CPUS.CTFY")).unwrap() {
            AmlValue::Method { code, .. } => *code = MethodCode::Aml(ctfy_stand_in()),
            other => panic!("CTFY is not a method: {other:?}"),
        }

        let guest = ModelGuest {
            on_add: OnAdd::Online,
            on_eject: OnEject::Eject,
            ignore_interrupts: false,
            cpus: (0..boot).collect(),
            started: (0..boot).collect(),
            deferred: Vec::new(),
            memory: memory::ModelMemory::default(),
        };
        Bed {
            manager,
            table,
            host,
            controller,
            clock,
            guest,
            max,
            blocker,
            mem: mem_part,
            doorbell,
            aml,
            accesses,
            notes,
            ged,
            ged_seen: 0,
            wake,
            vm,
            _memory: mem,
            _kvm: kvm,
            _one: one,
        }
    }

    /// GED interrupts lithe raised so far (its irqfd goes to KVM, as in lithe).
    fn ged_interrupts(&self) -> u64 {
        self.ged.counters().iter().find(|(n, _)| *n == "interrupts").map_or(0, |(_, v)| *v)
    }

    /// A resize to `n` vCPUs, through the entry point the API uses.
    pub fn resize(&mut self, n: u32) -> Result<ResizePlan, ResizeError> {
        resize::start(&mut self.manager, &Want::Count(n), std::time::Instant::now())
    }

    /// A targeted resize to exactly `ids`, through the API's entry point
    /// (validated as the API validates it).
    pub fn resize_ids(&mut self, ids: &[u32]) -> Result<ResizePlan, ResizeError> {
        let want = resize::ResizeRequest::ids(ids)?.want.expect("ids were given");
        resize::start(&mut self.manager, &want, std::time::Instant::now())
    }

    /// MMIO accesses the guest's AML made so far.
    pub fn mmio_accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    pub fn try_call(&mut self, path: AmlName, args: Vec<AmlValue>) -> Result<AmlValue, aml::AmlError> {
        self.aml.invoke_method(&path, Args::from_list(args).unwrap())
    }

    pub fn call(&mut self, path: AmlName, args: Vec<AmlValue>) -> AmlValue {
        self.aml.invoke_method(&path, Args::from_list(args).unwrap()).unwrap_or_else(|e| panic!("AML {path}: {e:?}"))
    }

    fn sta(&mut self, id: u32) -> u64 {
        let v = self.call(cpu_path(id, "_STA"), vec![]);
        v.as_integer(&self.aml).unwrap()
    }

    fn ost(&mut self, id: u32, event: u64, status: u64) {
        self.call(cpu_path(id, "_OST"), vec![int(event), int(status), int(0)]);
    }

    /// `_EJ0` the way Linux does it: offline first, then eject, then check
    /// that `_STA` says the device is gone.
    fn ej0(&mut self, id: u32) {
        self.call(cpu_path(id, "_EJ0"), vec![int(1)]);
        assert_eq!(self.sta(id), 0, "vCPU {id}: _STA after _EJ0 still says present");
        self.guest.cpus.remove(&id);
        self.guest.started.remove(&id);
    }

    /// The guest handles a pending GED interrupt, if there is one: `_EVT`
    /// runs the DSDT's scan, then each notification is handled per the
    /// guest's behaviour. Returns whether there was one.
    pub fn guest_handles_interrupt(&mut self) -> bool {
        let raised = self.ged_interrupts();
        if raised == self.ged_seen || self.guest.ignore_interrupts {
            return false;
        }
        self.ged_seen = raised;
        self.call(name("\\_SB_.GED_._EVT"), vec![int(u64::from(acpi::GED_IRQ))]);
        let notes = std::mem::take(&mut *self.notes.lock().unwrap());
        for (id, event) in notes {
            assert!(id < self.max, "Notify for vCPU {id} beyond max {}", self.max);
            match event {
                1 => self.guest_device_check(id),
                3 => self.guest_eject_request(id),
                e => panic!("vCPU {id}: unexpected Notify value {e}"),
            }
        }
        let mem_notes = self.mem.as_ref().map(|m| m.take_notes()).unwrap_or_default();
        for (slot, event) in mem_notes {
            self.guest_memory().notified(slot as usize, event);
        }
        true
    }

    /// The guest's memory side, through the AML (a bed built with slots).
    pub fn guest_memory(&mut self) -> memory::GuestSide<'_> {
        memory::GuestSide {
            aml: &mut self.aml,
            part: self.mem.as_ref().expect("a bed with memory slots"),
            guest: &mut self.guest.memory,
        }
    }

    /// The memory part (a bed built with slots).
    pub fn mem(&mut self) -> &mut memory::MemPart {
        self.mem.as_mut().expect("a bed with memory slots")
    }

    fn guest_device_check(&mut self, id: u32) {
        if self.sta(id) & 1 == 0 || self.guest.cpus.contains(&id) {
            return; // gone again, or already there: Linux does nothing
        }
        let mat = self.call(cpu_path(id, "_MAT"), vec![]);
        let mat = mat.as_buffer(&self.aml).unwrap().lock().clone();
        assert_eq!(mat, acpi::cpu_aml::madt_entry(id, id), "vCPU {id}: _MAT");
        match self.guest.on_add {
            OnAdd::Online | OnAdd::AckOnly => {
                self.guest.cpus.insert(id);
                self.ost(id, 1, 0);
                if self.guest.on_add == OnAdd::Online {
                    self.start_cpu(id);
                }
            }
            OnAdd::Fail => self.ost(id, 1, 1),
            OnAdd::Ignore => {}
        }
    }

    fn guest_eject_request(&mut self, id: u32) {
        if self.sta(id) & 1 == 0 {
            return;
        }
        // Linux ejects a CPU it never added at once, whatever its settings.
        if !self.guest.cpus.contains(&id) {
            self.ost(id, 3, 0x84);
            self.ej0(id);
            self.ost(id, 3, 0);
            return;
        }
        match self.guest.on_eject {
            OnEject::Eject => {
                self.ost(id, 3, 0x84);
                self.ej0(id);
                self.ost(id, 3, 0);
            }
            OnEject::Refuse => self.ost(id, 3, 0x80),
            OnEject::Ignore => {}
            OnEject::Defer => self.guest.deferred.push(id),
        }
    }

    /// The guest starts CPU `id`: vCPU 0 sends it INIT/SIPI. Waits until the
    /// vCPU thread has seen it run (unless the blocker holds it).
    pub fn start_cpu(&mut self, id: u32) {
        self.guest.started.insert(id);
        self.doorbell.queue.lock().unwrap().push_back(id);
        self.doorbell.rung.notify_all();
        if *self.blocker.held.lock().unwrap() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.state(id).phase != Phase::Running && !matches!(self.state(id).from, Phase::Running) {
            assert!(std::time::Instant::now() < deadline, "vCPU {id} was not seen running: {:?}", self.state(id));
            std::thread::sleep(Duration::from_micros(200));
        }
        self.vmm_handles_events();
    }

    /// An administrator onlines every CPU the guest has but never started.
    pub fn guest_onlines_all(&mut self) {
        for id in self.guest.cpus.clone() {
            if !self.guest.started.contains(&id) {
                self.start_cpu(id);
            }
        }
    }

    /// Ejects what the guest put off, late.
    pub fn eject_deferred(&mut self) {
        for id in std::mem::take(&mut self.guest.deferred) {
            if self.guest.cpus.contains(&id) && self.sta(id) & 1 != 0 {
                self.ost(id, 3, 0x84);
                self.ej0(id);
                self.ost(id, 3, 0);
            }
        }
    }

    /// An administrator in the guest ejects CPU `id` (sysfs `eject`).
    pub fn guest_ejects_on_its_own(&mut self, id: u32) {
        if id == 0 || !self.guest.cpus.contains(&id) {
            return; // no _EJ0 for vCPU 0; nothing to eject otherwise
        }
        self.ost(id, 0x103, 0x84);
        self.ej0(id);
        self.ost(id, 0x103, 0);
    }

    /// The main loop's reaction to the guest: what `Vmm` does on the host's wake-up.
    pub fn vmm_handles_events(&mut self) {
        if self.wake.read().is_ok() {
            self.manager.on_guest_events();
            if let Some(m) = self.mem.as_mut() {
                m.on_guest_events();
            }
        }
    }

    /// Whatever happened before, the guest turns cooperative (CPUs and
    /// memory) and time passes past every bound: both sides settle and then
    /// agree ([`Bed::check_settled`]).
    pub fn cooperate_and_settle(&mut self) {
        self.guest.on_add = OnAdd::Online;
        self.guest.on_eject = OnEject::Eject;
        self.guest.memory.on_add = OnAdd::Online;
        self.guest.memory.on_eject = OnEject::Eject;
        self.guest.ignore_interrupts = false;
        self.eject_deferred();
        if self.mem.is_some() {
            self.guest_memory().eject_deferred();
        }
        let past = TIMEOUT + Duration::from_millis(1);
        for _ in 0..4 {
            self.settle();
            self.guest_onlines_all();
            self.advance(past);
        }
        self.settle();
        self.vmm_handles_events();
        self.check_settled();
    }

    /// Time passes; the main loop's tick runs. lithe's loop arms its tick
    /// only while `needs_tick` says something waits on time: a tick it
    /// would have skipped must change nothing, and every bed test checks so.
    pub fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        let armed = self.manager.needs_tick() || self.mem.as_ref().is_some_and(|m| m.hotplug.needs_tick());
        let before = self.tick_view();
        self.manager.tick();
        if let Some(m) = self.mem.as_mut() {
            m.hotplug.tick();
        }
        if !armed {
            assert_eq!(before, self.tick_view(), "a tick lithe's loop would have skipped changed state");
        }
        if let Some(m) = self.mem.as_mut() {
            m.on_guest_events();
        }
    }

    /// What a tick may change: every vCPU's and memory slot's state.
    fn tick_view(&self) -> (Vec<State>, Vec<vmm::memory_hotplug::slots::SlotInfo>) {
        let slots = self.mem.as_ref().map(|m| m.slots.info()).unwrap_or_default();
        ((0..self.max).map(|id| self.table.state(id)).collect(), slots)
    }

    /// Guest and VMM exchange until neither has anything left to say.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            let interrupt = self.guest_handles_interrupt();
            let had_events = self.wake.read().is_ok();
            if had_events {
                self.manager.on_guest_events();
                if let Some(m) = self.mem.as_mut() {
                    m.on_guest_events();
                }
            }
            if !interrupt && !had_events {
                return;
            }
        }
        panic!("guest and VMM did not settle in 100 rounds");
    }

    pub fn state(&self, id: u32) -> State {
        self.table.state(id)
    }

    pub fn phases(&self) -> Vec<Phase> {
        (0..self.max).map(|id| self.table.state(id).phase).collect()
    }

    /// Ids the VMM has live (threads, and present for the guest's `_STA`).
    pub fn live(&self) -> BTreeSet<u32> {
        (0..self.max).filter(|&id| self.table.state(id).is_live()).collect()
    }

    /// `vcpu<N>` threads of this process.
    pub fn vcpu_threads() -> BTreeSet<u32> {
        let mut ids = BTreeSet::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            if let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) {
                if let Some(n) = comm.trim().strip_prefix("vcpu").and_then(|n| n.parse().ok()) {
                    ids.insert(n);
                }
            }
        }
        ids
    }

    /// Invariants that hold after every step.
    pub fn check_always(&self) {
        assert_eq!(self.state(0).phase, Phase::Running, "vCPU 0 is never removed");
        let desired = self.manager.target().desired();
        assert!((1..=self.max).contains(&desired), "target {desired} out of range");
        for id in 0..self.max {
            let s = self.state(id);
            assert_ne!(s.phase, Phase::Stuck, "vCPU {id} stuck");
            assert_ne!(s.phase, Phase::Ejected, "vCPU {id} ejected but not retired");
        }
        // A vCPU has a thread exactly while it is live (the thread of a
        // vCPU being retired is joined before the step returns).
        // (A joined thread can linger in /proc for a moment after its join.)
        let live = self.live();
        let mut threads = Self::vcpu_threads();
        // A generous bound: a loaded machine may take long to reap it, and
        // the loop ends as soon as the two agree.
        for _ in 0..10_000 {
            if threads == live {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            threads = Self::vcpu_threads();
        }
        assert_eq!(threads, live, "vcpu threads vs live vCPUs: {:?}", self.phases());
        if let Some(m) = &self.mem {
            m.check_always();
        }
    }

    /// Invariants once the guest has settled: both sides agree, and the
    /// VMM has reached its target.
    pub fn check_settled(&self) {
        self.check_always();
        assert_eq!(self.live(), self.guest.cpus, "VMM's vCPUs vs the guest's CPUs: {:?}", self.phases());
        // CPUs the guest added but did not start stay acknowledged: that is
        // the guest's doing, not the VMM's. Counted as running, the rest must
        // have converged, always.
        let mut states = self.table.states();
        for &id in self.guest.cpus.difference(&self.guest.started) {
            assert_eq!(states[id as usize].phase, Phase::Acknowledged, "vCPU {id}: added, not started");
            states[id as usize] = State::new(Phase::Running);
        }
        let desired = self.manager.target().desired();
        assert!(vmm::cpu::reconciler::converged(desired, &states), "not converged on {desired}: {states:?}");
        if let Some(ids) = &self.manager.target().status().vcpu_ids {
            assert!(vmm::cpu::reconciler::converged_ids(ids, &states), "not converged on vCPUs {ids:?}: {states:?}");
        }
        for id in &self.guest.started {
            assert_eq!(self.state(*id).phase, Phase::Running, "vCPU {id} runs in the guest");
        }
        if let Some(m) = &self.mem {
            m.check_settled(&self.guest.memory);
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // A failed test may leave a vCPU blocked in the port: let it go, so
        // no thread outlives its bed.
        self.blocker.release();
        self.manager.stop_all();
    }
}
