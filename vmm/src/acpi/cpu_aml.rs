//! AML for hot-pluggable vCPUs: `\_SB_.CPUS`, one `Cxxx` Processor device per
//! possible vCPU, and the methods that talk to the CPU hotplug controller.
//!
//! Designed for guests whose AML interpreter runs slowly (every kernel-mode
//! instruction is emulated under a software-nested KVM):
//! * `_STA` reads the VMM's presence word for its vCPU (`PRxx`, one MMIO read
//!   for 32 vCPUs' worth of state), inline, calling no helper method. The
//!   VMM is the one source of truth, so a guest can never see a vCPU the VMM
//!   has retired or miss one it added.
//!   (An earlier version cached presence in the namespace to save the exits
//!   at boot; the cache and the VMM drifted apart on guest-initiated ejects.)
//! * `_MAT` is a constant buffer.
//! * `CSCN` (the GED's CPU event) reads `max/32` pending-insert and
//!   pending-remove words and walks only up to the highest set bit of each
//!   non-zero word.
//! * `CTFY` dispatches `Notify` through a binary tree of comparisons:
//!   `log2(max)` steps instead of one `If` per possible vCPU.

use acpi_tables::aml::{
    self, Add, And, Arg, BufferData, Device, Else, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    If, LessThan, Local, Method, MethodCall, Name, Notify, OpRegion, OpRegionSpace, Path, Return, ShiftRight, Store,
    While,
};
use acpi_tables::{Aml, AmlSink};

use crate::arch::topology::Topology;
use devices::cpu_hotplug::{REG_EJECT, REG_INSERT, REG_OST_STATUS, REG_PRESENT, REG_REMOVE};

/// Pre-serialised AML, so generated pieces can be composed without lifetimes.
pub struct Raw(pub Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

pub fn bytes(a: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    Raw(v)
}

fn seq(items: &[&dyn Aml]) -> Raw {
    let mut v = Vec::new();
    for i in items {
        i.to_aml_bytes(&mut v);
    }
    Raw(v)
}

/// `Cxxx`: the device name of vCPU `id` (three hex digits: the controller's
/// 4096 vCPUs fit).
pub fn cpu_device_name(id: u32) -> String {
    format!("C{id:03X}")
}

/// `PRxx`, `INxx`, `RMxx`: the register field of bitmap word `w` (two hex
/// digits: 128 words).
fn word_name(prefix: &str, w: usize) -> [u8; 4] {
    let s = format!("{prefix}{w:02X}");
    let b = s.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// MADT processor structure types (ACPI 6.5, 5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_X2APIC: u8 = 9;
pub use crate::arch::x2apic::MAX_XAPIC_STRUCTURE_ID;

/// The MADT structure of vCPU `id` (its `_UID`) at `apic_id` with `flags`
/// (bit 0 enabled, bit 1 online-capable): a Local APIC structure where the
/// APIC id fits one, a Local x2APIC structure otherwise. `_MAT` returns the
/// same structure, enabled (it is only read for a present device).
pub fn madt_entry_with_flags(id: u32, apic_id: u32, flags: u32) -> Vec<u8> {
    if apic_id <= MAX_XAPIC_STRUCTURE_ID {
        // APIC ids never fall below vCPU ids (topology.rs only leaves gaps),
        // so `id` fits the structure's one-byte processor id too.
        vec![MADT_LOCAL_APIC, 8, id as u8, apic_id as u8, flags as u8, 0, 0, 0]
    } else {
        let mut v = vec![MADT_LOCAL_X2APIC, 16, 0, 0];
        v.extend_from_slice(&apic_id.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v
    }
}

/// `_MAT` of vCPU `id` at `apic_id`.
pub fn madt_entry(id: u32, apic_id: u32) -> Vec<u8> {
    madt_entry_with_flags(id, apic_id, 1)
}

/// `Return (Zero)`, closing a method whose last statement is an `If`: the
/// test bed's interpreter (`aml` 0.16) fails with UnexpectedEndOfStream on
/// an `If` that ends a method body (it looks for an `Else` past the end).
/// Harmless to every other interpreter: the method returned 0 implicitly.
pub fn end_of_method() -> Raw {
    bytes(&Return::new(&aml::ZERO))
}

/// `Local0 = field & 0xFFFFFFFF`: reads a register field into `Local0` as an
/// integer. A plain `Store(field, Local0)` reads it too in ACPICA, but the
/// AML interpreter of the in-process test bed (rust-osdev's `aml`) stores
/// the field object instead; the mask is the same single read for both.
pub fn read_register(field: &dyn Aml) -> Raw {
    bytes(&Store::new(&Local(0), &And::new(&aml::ZERO, field, &0xffff_ffffusize)))
}

/// The register block as four operation regions, each with its fields:
/// `CPRS` (`PRxx`), `CINS` (`INxx`), `CRMV` (`RMxx`) for the bitmap words
/// in use, and `CCTL` (`EJCT`, `OSEL`, `OEVT`, `OSTS`). Separate regions
/// rather than one field list with reserved gaps: the gaps past a small
/// VM's words would be thousands of bits, which the test bed's interpreter
/// (`aml` 0.16) misreads as a byte length (InvalidPkgLength).
fn register_regions(mmio_base: u64, words: usize) -> Vec<Raw> {
    let field = |region: &str, names: Vec<[u8; 4]>| {
        let entries = names.into_iter().map(|n| FieldEntry::Named(n, 32)).collect();
        bytes(&Field::new(
            region.into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            entries,
        ))
    };
    let region = |name: &str, offset: u64, len: usize| {
        bytes(&OpRegion::new(name.into(), OpRegionSpace::SystemMemory, &((mmio_base + offset) as usize), &len))
    };
    let mut out = Vec::new();
    for (name, offset, prefix) in [("CPRS", REG_PRESENT, "PR"), ("CINS", REG_INSERT, "IN"), ("CRMV", REG_REMOVE, "RM")]
    {
        out.push(region(name, offset, words * 4));
        out.push(field(name, (0..words).map(|w| word_name(prefix, w)).collect()));
    }
    out.push(region("CCTL", REG_EJECT, 16));
    out.push(field("CCTL", vec![*b"EJCT", *b"OSEL", *b"OEVT", *b"OSTS"]));
    debug_assert_eq!(REG_OST_STATUS, REG_EJECT + 12);
    out
}

/// `CTFY(id, event)`: Notify(Cxxx, event) through a binary search on id.
fn ctfy(max: u32) -> Raw {
    ctfy_with(max, &|id| {
        let dev = bytes(&Path::new(&cpu_device_name(id)));
        bytes(&Notify::new(&dev, &Arg(1)))
    })
}

/// `CTFY` with `leaf(id)` where vCPU `id` is reached (tests put a recorder
/// there: AML interpreters for tests lack `Notify`).
pub fn ctfy_with(max: u32, leaf: &dyn Fn(u32) -> Raw) -> Raw {
    fn tree(lo: u32, hi: u32, leaf: &dyn Fn(u32) -> Raw) -> Raw {
        if hi - lo == 1 {
            return leaf(lo);
        }
        let mid = lo + (hi - lo) / 2;
        let left = tree(lo, mid, leaf);
        let right = tree(mid, hi, leaf);
        let cond = bytes(&LessThan::new(&Arg(0), &(mid as usize)));
        let yes = bytes(&If::new(&cond, vec![&left]));
        let no = bytes(&Else::new(vec![&right]));
        seq(&[&yes, &no])
    }
    let body = tree(0, max, leaf);
    bytes(&Method::new("CTFY".into(), 2, false, vec![&body]))
}

/// The part of `CSCN` for one pending-event word: ack what we read, then
/// notify each vCPU whose bit was set, stopping at the highest set bit.
fn scan_word(w: usize, reg: [u8; 4], insert: bool) -> Raw {
    let reg_path = bytes(&Path::new(std::str::from_utf8(&reg).expect("ascii")));
    let read = read_register(&reg_path);
    let ack = bytes(&Store::new(&reg_path, &Local(0)));
    let reset_bit = bytes(&Store::new(&Local(1), &aml::ZERO));
    let id = bytes(&Add::new(&Local(2), &Local(1), &(w * 32)));
    let notify_insert = bytes(&MethodCall::new("CTFY".into(), vec![&Local(2), &aml::ONE]));
    let notify_eject = bytes(&MethodCall::new("CTFY".into(), vec![&Local(2), &3usize]));
    let on_bit: Vec<&dyn Aml> = if insert { vec![&id, &notify_insert] } else { vec![&id, &notify_eject] };
    let bit_set = bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &aml::ONE), on_bit));
    let shift = bytes(&ShiftRight::new(&Local(0), &Local(0), &aml::ONE));
    let next = bytes(&Add::new(&Local(1), &Local(1), &aml::ONE));
    let walk = bytes(&While::new(&Local(0), vec![&bit_set, &shift, &next]));
    let nonzero = bytes(&If::new(&Local(0), vec![&ack, &reset_bit, &walk]));
    seq(&[&read, &nonzero])
}

/// `CSCN()`: the GED's CPU event. Inserts first, then eject requests.
fn cscn(words: usize) -> Raw {
    let mut parts = Vec::new();
    for w in 0..words {
        parts.push(scan_word(w, word_name("IN", w), true));
    }
    for w in 0..words {
        parts.push(scan_word(w, word_name("RM", w), false));
    }
    let done = end_of_method();
    let mut refs: Vec<&dyn Aml> = parts.iter().map(|p| p as &dyn Aml).collect();
    refs.push(&done);
    bytes(&Method::new("CSCN".into(), 0, true, refs))
}

/// `CEJ0(id)`: the guest ejected `id`: tell the VMM, which drops it from the
/// presence word at once (so `_STA` right after `_EJ0` says absent).
fn cej0() -> Raw {
    let tell = bytes(&Store::new(&Path::new("EJCT"), &Arg(0)));
    bytes(&Method::new("CEJ0".into(), 1, true, vec![&tell]))
}

/// `COST(id, event, status)`: forwards an `_OST` report.
fn cost() -> Raw {
    let sel = bytes(&Store::new(&Path::new("OSEL"), &Arg(0)));
    let ev = bytes(&Store::new(&Path::new("OEVT"), &Arg(1)));
    let st = bytes(&Store::new(&Path::new("OSTS"), &Arg(2)));
    bytes(&Method::new("COST".into(), 3, true, vec![&sel, &ev, &st]))
}

fn cpu_device(id: u32, apic_id: u32) -> Raw {
    let name = cpu_device_name(id);
    let hid = bytes(&Name::new("_HID".into(), &"ACPI0007"));
    let uid = bytes(&Name::new("_UID".into(), &(id as usize)));
    let word = bytes(&Path::new(std::str::from_utf8(&word_name("PR", (id / 32) as usize)).expect("ascii")));
    let mask = 1usize << (id % 32);
    // Inline rather than a shared helper method: Linux evaluates `_STA` of
    // every possible vCPU several times at boot, and under an emulated
    // guest kernel each extra method invocation costs milliseconds.
    let present = bytes(&If::new(&And::new(&aml::ZERO, &word, &mask), vec![&Return::new(&0xfusize)]));
    let absent = bytes(&Return::new(&aml::ZERO));
    let sta = Method::new("_STA".into(), 0, false, vec![&present, &absent]);
    let mat_buf = BufferData::new(madt_entry(id, apic_id));
    let mat = bytes(&Name::new("_MAT".into(), &mat_buf));
    let ost_call = bytes(&MethodCall::new("COST".into(), vec![&(id as usize), &Arg(0), &Arg(1)]));
    let ost = Method::new("_OST".into(), 3, false, vec![&ost_call]);
    let ej0_call = bytes(&MethodCall::new("CEJ0".into(), vec![&(id as usize)]));
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&ej0_call]);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &sta, &mat, &ost];
    // vCPU 0 is never removable: no _EJ0, so the guest never offers to eject it.
    if id != 0 {
        children.push(&ej0);
    }
    bytes(&Device::new(Path::new(&name), children))
}

/// `\_SB_.CPUS` for the possible vCPUs of `topology`.
pub fn cpus_container(topology: &Topology, mmio_base: u64) -> Raw {
    let max = topology.vcpus();
    let words = max.div_ceil(32) as usize;
    let hid = bytes(&Name::new("_HID".into(), &"ACPI0010"));
    let cid = bytes(&Name::new("_CID".into(), &aml::EISAName::new("PNP0A05")));
    let regions = register_regions(mmio_base, words);
    let methods = [ctfy(max), cscn(words), cej0(), cost()];
    let devices: Vec<Raw> = (0..max).map(|id| cpu_device(id, topology.apic_id(id))).collect();
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid];
    children.extend(regions.iter().map(|r| r as &dyn Aml));
    children.extend(methods.iter().map(|m| m as &dyn Aml));
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    bytes(&Device::new("\\_SB_.CPUS".into(), children))
}
