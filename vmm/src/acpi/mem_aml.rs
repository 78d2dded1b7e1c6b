//! AML for hot-pluggable memory: `\_SB_.MHPC` with the methods that talk to
//! the memory hotplug controller (devices/src/mem_hotplug.rs), and one
//! `PNP0C80` memory device per slot, `MExx`, whose `_CRS` is read from the
//! controller when the guest asks (a slot's range is only known once it is
//! filled). The layout follows QEMU's memory hotplug AML, which Linux's
//! `acpi_memhotplug` driver was written against: `MSCN` on the GED's memory
//! event notifies each slot with a pending insert (1) or eject request (3).
//!
//! One mutex, `MLCK`, orders every selection of a slot and what follows it:
//! the selector is a single register the guest's methods share.

use acpi_tables::aml::{
    self, Acquire, Add, And, Arg, CreateQWordField, Device, EISAName, Field, FieldAccessType, FieldEntry,
    FieldLockRule, FieldUpdateRule, If, LessThan, Local, Method, MethodCall, Mutex, Name, Notify, OpRegion,
    OpRegionSpace, Path, Release, ResourceTemplate, Return, ShiftLeft, Store, While,
};
use acpi_tables::Aml;

use super::cpu_aml::{bytes, end_of_method, Raw};
use devices::mem_hotplug::{
    CONTROL_CLEAR_INSERT, CONTROL_CLEAR_REMOVE, CONTROL_EJECT, REG_STATUS, STATUS_ENABLED, STATUS_INSERT, STATUS_REMOVE,
};

/// `MExx`: the device name of slot `index` (two hex digits: 64 slots fit).
pub fn mem_device_name(index: usize) -> String {
    format!("ME{index:02X}")
}

fn path(name: &str) -> Raw {
    bytes(&Path::new(name))
}

/// `Local(n) = field & mask`: a register read the test bed's interpreter
/// stores as an integer too (see `cpu_aml::read_register`).
fn read_into(local: u8, field: &str, mask: usize) -> Raw {
    bytes(&Store::new(&Local(local), &And::new(&aml::ZERO, &Path::new(field), &mask)))
}

/// The register block: `MHPR` (32-bit registers: base, length and
/// proximity to read; selector and `_OST` to write, the same offsets) and
/// `MHST` (the status and control byte).
fn regions(base: u64) -> Vec<Raw> {
    let dwords = |names: &[&[u8; 4]]| {
        let entries = names.iter().map(|n| FieldEntry::Named(**n, 32)).collect();
        bytes(&Field::new(
            "MHPR".into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::Preserve,
            entries,
        ))
    };
    vec![
        bytes(&OpRegion::new("MHPR".into(), OpRegionSpace::SystemMemory, &(base as usize), &(REG_STATUS as usize))),
        dwords(&[b"MBLO", b"MBHI", b"MLLO", b"MLHI", b"MPXM"]),
        dwords(&[b"MSEL", b"MOEV", b"MOSC"]),
        bytes(&OpRegion::new("MHST".into(), OpRegionSpace::SystemMemory, &((base + REG_STATUS) as usize), &1usize)),
        bytes(&Field::new(
            "MHST".into(),
            FieldAccessType::Byte,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            vec![FieldEntry::Named(*b"MSTA", 8)],
        )),
    ]
}

fn locked(name: &str, args: u8, body: &[&dyn Aml]) -> Raw {
    let acquire = Acquire::new("MLCK".into(), 0xffff);
    let release = Release::new("MLCK".into());
    let mut all: Vec<&dyn Aml> = vec![&acquire];
    all.extend_from_slice(body);
    all.push(&release);
    bytes(&Method::new(name.into(), args, true, all))
}

/// `MTFY(slot, event)`: Notify(MExx, event).
fn mtfy(slots: usize) -> Raw {
    let arms: Vec<Raw> = (0..slots)
        .map(|i| {
            let dev = path(&mem_device_name(i));
            let notify = Notify::new(&dev, &Arg(1));
            bytes(&If::new(&aml::Equal::new(&Arg(0), &i), vec![&notify]))
        })
        .collect();
    let refs: Vec<&dyn Aml> = arms.iter().map(|a| a as &dyn Aml).collect();
    bytes(&Method::new("MTFY".into(), 2, false, refs))
}

/// `MSCN()`: the GED's memory event. Each slot with a pending insert is
/// notified 1, each with a pending eject request 3, and the event cleared.
fn mscn(slots: usize) -> Raw {
    let zero = bytes(&Store::new(&Local(1), &aml::ZERO));
    let select = bytes(&Store::new(&Path::new("MSEL"), &Local(1)));
    let status = read_into(0, "MSTA", 0xff);
    let ins_notify = bytes(&MethodCall::new("MTFY".into(), vec![&Local(1), &aml::ONE]));
    let ins_clear = bytes(&Store::new(&Path::new("MSTA"), &(CONTROL_CLEAR_INSERT as usize)));
    let ins =
        bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &(STATUS_INSERT as usize)), vec![&ins_notify, &ins_clear]));
    let rm_notify = bytes(&MethodCall::new("MTFY".into(), vec![&Local(1), &3usize]));
    let rm_clear = bytes(&Store::new(&Path::new("MSTA"), &(CONTROL_CLEAR_REMOVE as usize)));
    let rm = bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &(STATUS_REMOVE as usize)), vec![&rm_notify, &rm_clear]));
    let next = bytes(&Add::new(&Local(1), &Local(1), &aml::ONE));
    let walk = bytes(&While::new(&LessThan::new(&Local(1), &slots), vec![&select, &status, &ins, &rm, &next]));
    let done = end_of_method();
    locked("MSCN", 0, &[&zero, &walk, &done])
}

/// `MRST(slot)`: `_STA`, 0xF for an enabled slot, else 0.
fn mrst() -> Raw {
    let result = bytes(&Store::new(&Local(1), &aml::ZERO));
    let select = bytes(&Store::new(&Path::new("MSEL"), &Arg(0)));
    let status = read_into(0, "MSTA", 0xff);
    let on = bytes(&If::new(
        &And::new(&aml::ZERO, &Local(0), &(STATUS_ENABLED as usize)),
        vec![&Store::new(&Local(1), &0xfusize)],
    ));
    let ret = bytes(&Return::new(&Local(1)));
    let acquire = Acquire::new("MLCK".into(), 0xffff);
    let release = Release::new("MLCK".into());
    bytes(&Method::new("MRST".into(), 1, true, vec![&acquire, &result, &select, &status, &on, &release, &ret]))
}

/// `MCRS(slot)`: `_CRS`, the slot's range as a QWordMemory descriptor.
fn mcrs() -> Raw {
    // Offsets of a QWord address space descriptor's minimum, maximum and
    // length (ACPI 6.5, 6.4.3.5.1).
    let range = aml::AddressSpace::new_memory(aml::AddressSpaceCacheable::Cacheable, true, 0u64, 0xffff_fffe_u64, None);
    let template = ResourceTemplate::new(vec![&range]);
    let name = bytes(&Name::new("MR64".into(), &template));
    let min = bytes(&CreateQWordField::new(&Path::new("MINL"), &Path::new("MR64"), &14usize));
    let max = bytes(&CreateQWordField::new(&Path::new("MAXL"), &Path::new("MR64"), &22usize));
    let len = bytes(&CreateQWordField::new(&Path::new("LENL"), &Path::new("MR64"), &38usize));
    let select = bytes(&Store::new(&Path::new("MSEL"), &Arg(0)));
    // Local0 = base, Local1 = length, each from two 32-bit halves, joined
    // with Add (the halves do not overlap; the test bed's interpreter has no
    // Or), and the last byte as base + length + Ones (no Subtract either).
    let base_hi = read_into(0, "MBHI", 0xffff_ffff);
    let base_shift = bytes(&ShiftLeft::new(&Local(0), &Local(0), &32usize));
    let base_lo = read_into(2, "MBLO", 0xffff_ffff);
    let base = bytes(&Add::new(&Local(0), &Local(0), &Local(2)));
    let len_hi = read_into(1, "MLHI", 0xffff_ffff);
    let len_shift = bytes(&ShiftLeft::new(&Local(1), &Local(1), &32usize));
    let len_lo = read_into(2, "MLLO", 0xffff_ffff);
    let length = bytes(&Add::new(&Local(1), &Local(1), &Local(2)));
    let set_min = bytes(&Store::new(&Path::new("MINL"), &Local(0)));
    let set_len = bytes(&Store::new(&Path::new("LENL"), &Local(1)));
    let last = bytes(&Add::new(&Local(2), &Add::new(&aml::ZERO, &Local(0), &Local(1)), &aml::ONES));
    let set_max = bytes(&Store::new(&Path::new("MAXL"), &Local(2)));
    let ret = bytes(&Return::new(&Path::new("MR64")));
    let acquire = Acquire::new("MLCK".into(), 0xffff);
    let release = Release::new("MLCK".into());
    bytes(&Method::new(
        "MCRS".into(),
        1,
        true,
        vec![
            &name,
            &min,
            &max,
            &len,
            &acquire,
            &select,
            &base_hi,
            &base_shift,
            &base_lo,
            &base,
            &len_hi,
            &len_shift,
            &len_lo,
            &length,
            &release,
            &set_min,
            &set_len,
            &last,
            &set_max,
            &ret,
        ],
    ))
}

/// `MOST(slot, event, status)`: forwards an `_OST` report.
fn most() -> Raw {
    let select = bytes(&Store::new(&Path::new("MSEL"), &Arg(0)));
    let event = bytes(&Store::new(&Path::new("MOEV"), &Arg(1)));
    let status = bytes(&Store::new(&Path::new("MOSC"), &Arg(2)));
    locked("MOST", 3, &[&select, &event, &status])
}

/// `MEJ0(slot)`: the guest ejected the slot's memory.
fn mej0() -> Raw {
    let select = bytes(&Store::new(&Path::new("MSEL"), &Arg(0)));
    let eject = bytes(&Store::new(&Path::new("MSTA"), &(CONTROL_EJECT as usize)));
    locked("MEJ0", 1, &[&select, &eject])
}

fn mem_device(index: usize) -> Raw {
    let hid = bytes(&Name::new("_HID".into(), &EISAName::new("PNP0C80")));
    let uid = bytes(&Name::new("_UID".into(), &index));
    let sta_call = bytes(&MethodCall::new("MRST".into(), vec![&index]));
    let sta_ret = Return::new(&sta_call);
    let sta = Method::new("_STA".into(), 0, false, vec![&sta_ret]);
    let crs_call = bytes(&MethodCall::new("MCRS".into(), vec![&index]));
    let crs_ret = Return::new(&crs_call);
    let crs = Method::new("_CRS".into(), 0, false, vec![&crs_ret]);
    let ost_call = bytes(&MethodCall::new("MOST".into(), vec![&index, &Arg(0), &Arg(1)]));
    let ost = Method::new("_OST".into(), 3, false, vec![&ost_call]);
    let ej0_call = bytes(&MethodCall::new("MEJ0".into(), vec![&index]));
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&ej0_call]);
    bytes(&Device::new(Path::new(&mem_device_name(index)), vec![&hid, &uid, &sta, &crs, &ost, &ej0]))
}

/// `\_SB_.MHPC` for `slots` slots, its registers at `mmio_base`.
pub fn memory_container(slots: usize, mmio_base: u64) -> Raw {
    let hid = bytes(&Name::new("_HID".into(), &"PNP0A06"));
    let uid = bytes(&Name::new("_UID".into(), &"Memory hotplug"));
    let lock = bytes(&Mutex::new("MLCK".into(), 0));
    let regions = regions(mmio_base);
    let methods = [mtfy(slots), mscn(slots), mrst(), mcrs(), most(), mej0()];
    let devices: Vec<Raw> = (0..slots).map(mem_device).collect();
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &lock];
    children.extend(regions.iter().map(|r| r as &dyn Aml));
    children.extend(methods.iter().map(|m| m as &dyn Aml));
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    bytes(&Device::new("\\_SB_.MHPC".into(), children))
}
