//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}. The RSDP, XSDT, FADT and
//! MADT sit in the BIOS area at [`ACPI_START`]; the DSDT, which grows with
//! `max_vcpus`, below it at [`ACPI_DSDT_START`]. Hardware-reduced ACPI: no PM blocks or GPEs; events come
//! through the Generic Event Device, power through the FADT's sleep and reset
//! registers.

pub mod cpu_aml;
pub mod mem_aml;
pub mod virtio_aml;

use acpi_tables::aml::{self, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Method};
use acpi_tables::aml::{And, Device, EISAName, Interrupt, Local, MethodCall, Name, OpRegion, OpRegionSpace, Package};
use acpi_tables::aml::{ResourceTemplate, IO};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{IoApic, LocalInterruptController, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::topology::Topology;
use crate::memory::{GuestMemory, ACPI_DSDT_END, ACPI_DSDT_START, ACPI_END, ACPI_START};
use crate::memory::{CPU_HOTPLUG_MMIO_BASE, GED_MMIO_BASE, IOAPIC_BASE, LAPIC_BASE, MEM_HOTPLUG_MMIO_BASE};
use cpu_aml::{bytes, cpus_container, Raw};
use devices::ged::{GED_EVENT_CPU_HOTPLUG, GED_EVENT_MEM_HOTPLUG, GED_EVENT_POWER_BUTTON, GED_MMIO_LEN};
use devices::power::{
    ACPI_POWER_PORT, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
use devices::serial::{COM1_IRQ, COM1_PORT};

const OEM_ID: [u8; 6] = *b"LITHE ";
const OEM_TABLE_ID: [u8; 8] = *b"LITHEVM ";
const OEM_REVISION: u32 = 1;
/// The GSI of the Generic Event Device.
pub const GED_IRQ: u32 = 5;
/// MADT revision with the "online capable" processor flag (ACPI 6.3).
const MADT_REVISION: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the {table} needs {needed} bytes but only {available} fit where it goes; use fewer possible vCPUs")]
    TooLarge { table: &'static str, needed: u64, available: u64 },
    #[error("writing ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The serialised tables, each with the guest address it belongs at.
pub struct AcpiTables {
    pub tables: Vec<(&'static str, u64, Vec<u8>)>,
}

impl AcpiTables {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.tables.iter().find(|t| t.0 == name).map(|t| t.2.as_slice())
    }

    pub fn write(&self, mem: &GuestMemory) -> Result<(), AcpiError> {
        for (_, addr, data) in &self.tables {
            mem.write_slice(data, GuestAddress(*addr))?;
        }
        Ok(())
    }
}

fn serial_device() -> Raw {
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let io = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let crs = ResourceTemplate::new(vec![&irq, &io]);
    let hid = EISAName::new("PNP0501");
    bytes(&Device::new(
        "COM1".into(),
        vec![&Name::new("_HID".into(), &hid), &Name::new("_UID".into(), &aml::ZERO), &Name::new("_CRS".into(), &crs)],
    ))
}

fn ged_device(memory: bool) -> Raw {
    let irq = Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = bytes(&OpRegion::new(
        "GDST".into(),
        OpRegionSpace::SystemMemory,
        &(GED_MMIO_BASE as usize),
        &(GED_MMIO_LEN as usize),
    ));
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"GDAT", 32)],
    );
    let read = cpu_aml::read_register(&aml::Path::new("GDAT"));
    let scan = bytes(&MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]));
    let cpu = bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &(GED_EVENT_CPU_HOTPLUG as usize)), vec![&scan]));
    let press = bytes(&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &0x80usize));
    let power = bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &(GED_EVENT_POWER_BUTTON as usize)), vec![&press]));
    let mem_scan = bytes(&MethodCall::new("\\_SB_.MHPC.MSCN".into(), vec![]));
    let mem = bytes(&If::new(&And::new(&aml::ZERO, &Local(0), &(GED_EVENT_MEM_HOTPLUG as usize)), vec![&mem_scan]));
    let done = cpu_aml::end_of_method();
    let mut steps: Vec<&dyn Aml> = vec![&read, &cpu, &power];
    if memory {
        steps.push(&mem);
    }
    steps.push(&done);
    let evt = Method::new("_EVT".into(), 1, true, steps);
    bytes(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ))
}

/// The power button `vm.power-button` presses (a control-method button:
/// the FADT sets PWR_BUTTON, so there is no fixed one).
fn power_button() -> Raw {
    let hid = EISAName::new("PNP0C0C");
    bytes(&Device::new("PWRB".into(), vec![&Name::new("_HID".into(), &hid), &Name::new("_UID".into(), &aml::ZERO)]))
}

/// The DSDT's AML body; `mem_slots` hot-pluggable memory slots (none: no
/// memory hotplug container).
pub fn dsdt_body(topology: &Topology, mem_slots: usize) -> Vec<u8> {
    let cpus = cpus_container(topology, CPU_HOTPLUG_MMIO_BASE);
    let serial = serial_device();
    let ged = ged_device(mem_slots > 0);
    let pwrb = power_button();
    let sb = bytes(&aml::Scope::new("\\_SB_".into(), vec![&serial, &pwrb, &ged]));
    let s5_type = S5_SLEEP_TYPE as usize;
    let s5_pkg = Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = bytes(&Name::new("_S5_".into(), &s5_pkg));
    let mut out = Vec::new();
    // CPUS (and MHPC) first: GED's _EVT refers to their scan methods.
    cpus.to_aml_bytes(&mut out);
    if mem_slots > 0 {
        mem_aml::memory_container(mem_slots, MEM_HOTPLUG_MMIO_BASE).to_aml_bytes(&mut out);
    }
    sb.to_aml_bytes(&mut out);
    s5.to_aml_bytes(&mut out);
    out
}

fn dsdt(topology: &Topology, mem_slots: usize, virtio: &[virtio_aml::MmioDevice]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&dsdt_body(topology, mem_slots));
    if !virtio.is_empty() {
        let devices = virtio_aml::devices(virtio);
        let refs: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
        sdt.append_slice(&bytes(&aml::Scope::new("\\_SB_".into(), refs)).0);
    }
    sdt.update_checksum();
    sdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |offset: u64, width| {
        GAS::new(AddressSpace::SystemIo, width, 0, AccessSize::ByteAccess, u64::from(ACPI_POWER_PORT) + offset)
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = io(RESET_OFFSET, 8);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io(SLEEP_CONTROL_OFFSET, 8);
    b.sleep_status_reg = io(SLEEP_STATUS_OFFSET, 8);
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"LITHEVMM").into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// MADT processor flags.
const MADT_ENABLED: u32 = 1;
const MADT_ONLINE_CAPABLE: u32 = 2;
/// Length of the MADT's header (the SDT header, the LAPIC address, flags).
const MADT_HEADER_LEN: usize = 44;

/// Every possible vCPU, by `_UID` (its vCPU id) and APIC id: boot ones
/// enabled, the rest online-capable (hot-pluggable). APIC ids up to 254 get
/// a Local APIC structure, higher ones a Local x2APIC structure.
fn madt(boot_vcpus: u32, topology: &Topology) -> Vec<u8> {
    let mut m = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(LAPIC_BASE as u32));
    m.add_structure(IoApic::new(0, IOAPIC_BASE as u32, 0));
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    // The processor structures are spliced in by hand: acpi_tables 0.2 has
    // no Local x2APIC structure (type 9). They go before the I/O APIC.
    let io_apic = out.split_off(MADT_HEADER_LEN);
    for id in 0..topology.vcpus() {
        let flags = if id < boot_vcpus { MADT_ENABLED } else { MADT_ONLINE_CAPABLE };
        out.extend(cpu_aml::madt_entry_with_flags(id, topology.apic_id(id), flags));
    }
    out.extend(io_apic);
    let len = out.len() as u32;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    // The crate writes revision 1: Linux reads "online capable" only from
    // revision 5 on. Flags stay 0: no PCAT_COMPAT, there are no 8259 PICs
    // (arch/irq_routing.rs).
    out[8] = MADT_REVISION;
    fix_checksum(&mut out);
    out
}

fn align8(v: u64) -> u64 {
    (v + 7) & !7
}

/// Builds all tables for a VM with `boot_vcpus` of `topology`'s vCPUs present.
pub fn build(
    boot_vcpus: u32,
    topology: &Topology,
    mem_slots: usize,
    virtio: &[virtio_aml::MmioDevice],
) -> Result<AcpiTables, AcpiError> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align8(rsdp_addr + Rsdp::len() as u64);
    // XSDT with two entries: header (36) + 2 * 8.
    let fadt_addr = align8(xsdt_addr + 36 + 16);
    let madt_addr = align8(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let madt = madt(boot_vcpus, topology);
    let end = madt_addr + madt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge { table: "MADT", needed: end - ACPI_START, available: ACPI_END - ACPI_START });
    }
    let dsdt_addr = ACPI_DSDT_START;
    let dsdt = dsdt(topology, mem_slots, virtio);
    if dsdt.len() as u64 > ACPI_DSDT_END - ACPI_DSDT_START {
        return Err(AcpiError::TooLarge {
            table: "DSDT",
            needed: dsdt.len() as u64,
            available: ACPI_DSDT_END - ACPI_DSDT_START,
        });
    }
    let fadt = fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    debug_assert_eq!(xsdt_bytes.len(), 52);
    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);
    Ok(AcpiTables {
        tables: vec![
            ("RSDP", rsdp_addr, rsdp_bytes),
            ("XSDT", xsdt_addr, xsdt_bytes),
            ("FACP", fadt_addr, fadt),
            ("DSDT", dsdt_addr, dsdt),
            ("APIC", madt_addr, madt),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_fit_and_checksum() {
        for (boot, max) in [(1, 1), (2, 4), (1, 254), (1, 288), (1, 1024)] {
            let t = build(boot, &Topology::flat(max), 0, &[]).unwrap();
            for (name, addr, data) in &t.tables {
                let (start, end) =
                    if *name == "DSDT" { (ACPI_DSDT_START, ACPI_DSDT_END) } else { (ACPI_START, ACPI_END) };
                assert!(*addr >= start && addr + data.len() as u64 <= end, "{name}");
                if *name != "RSDP" {
                    assert!(checksum_ok(data), "{name} checksum");
                    assert_eq!(
                        u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize,
                        data.len(),
                        "{name} length"
                    );
                }
            }
            assert!(checksum_ok(&t.get("RSDP").unwrap()[..20]));
        }
    }

    /// (type, uid, apic id, flags) of each processor structure.
    fn madt_processors(madt: &[u8]) -> Vec<(u8, u32, u32, u32)> {
        let u32_at = |o: usize| u32::from_le_bytes(madt[o..o + 4].try_into().unwrap());
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN;
        while off < madt.len() {
            let (ty, len) = (madt[off], madt[off + 1] as usize);
            match ty {
                0 => out.push((0, u32::from(madt[off + 2]), u32::from(madt[off + 3]), u32_at(off + 4))),
                9 => out.push((9, u32_at(off + 12), u32_at(off + 4), u32_at(off + 8))),
                _ => {}
            }
            assert!(len > 0);
            off += len;
        }
        out
    }

    #[test]
    fn madt_lists_every_possible_vcpu() {
        let t = build(2, &Topology::flat(4), 0, &[]).unwrap();
        let madt = t.get("APIC").unwrap();
        assert_eq!(madt[8], MADT_REVISION);
        assert_eq!(madt_processors(madt), vec![(0, 0, 0, 1), (0, 1, 1, 1), (0, 2, 2, 2), (0, 3, 3, 2)]);
    }

    #[test]
    fn apic_ids_past_254_get_x2apic_structures() {
        let t = build(1, &Topology::flat(300), 0, &[]).unwrap();
        let madt = t.get("APIC").unwrap();
        assert!(checksum_ok(madt));
        let procs = madt_processors(madt);
        assert_eq!(procs.len(), 300);
        assert_eq!(procs[0], (0, 0, 0, MADT_ENABLED));
        assert_eq!(procs[254], (0, 254, 254, MADT_ONLINE_CAPABLE));
        assert_eq!(procs[255], (9, 255, 255, MADT_ONLINE_CAPABLE));
        assert_eq!(procs[299], (9, 299, 299, MADT_ONLINE_CAPABLE));
        // The I/O APIC is still there, after them.
        assert_eq!(madt[madt.len() - 12], 1);
        // A sparse topology reaches x2APIC ids with fewer vCPUs: 2 packages
        // of 129 cores use 8 core bits, so package 1 starts at APIC id 256.
        let sparse = Topology { threads: 1, cores: 129, dies: 1, packages: 2 };
        let procs = madt_processors(build(1, &sparse, 0, &[]).unwrap().get("APIC").unwrap());
        assert_eq!(procs[128], (0, 128, 128, MADT_ONLINE_CAPABLE));
        assert_eq!(procs[129], (9, 129, 256, MADT_ONLINE_CAPABLE));
    }

    #[test]
    fn tables_that_do_not_fit_are_refused_with_the_table_named() {
        // lithe's own limit fits, with the widest _MAT structures.
        let limit = crate::config::MAX_SUPPORTED_VCPUS;
        build(limit, &Topology::flat(limit), 0, &[]).unwrap();
        build(1, &Topology { threads: 2, cores: limit / 4, dies: 1, packages: 2 }, 0, &[]).unwrap();
        // The controller's 4096 do not: about 500 KiB of DSDT.
        match build(1, &Topology::flat(devices::cpu_hotplug::MAX_CPUS), 0, &[]) {
            Err(AcpiError::TooLarge { table, needed, .. }) => assert_eq!((table, needed > 400_000), ("DSDT", true)),
            other => panic!("expected the DSDT to be too large, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn dsdt_has_a_device_per_possible_vcpu_and_the_ged() {
        let body = dsdt_body(&Topology::flat(20), 0);
        let has = |s: &[u8]| body.windows(s.len()).any(|w| w == s);
        assert!(has(b"C000") && has(b"C013") && !has(b"C014"));
        assert!(has(b"ACPI0013") && has(b"ACPI0010") && has(b"_S5_") && has(b"CSCN") && has(b"PWRB"));
    }

    const VIRTIO_SAMPLE: [virtio_aml::MmioDevice; 2] = [
        virtio_aml::MmioDevice { base: 0xd000_0000, len: 0x1000, gsi: 16 },
        virtio_aml::MmioDevice { base: 0xd000_1000, len: 0x1000, gsi: 17 },
    ];

    #[test]
    fn virtio_devices_are_lnro0005_with_their_window_and_interrupt() {
        let t = build(1, &Topology::flat(2), 0, &VIRTIO_SAMPLE).unwrap();
        let dsdt = t.get("DSDT").unwrap();
        let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
        assert!(has(b"VR00") && has(b"VR01") && has(b"LNRO0005"));
        assert!(has(&0xd000_1000u32.to_le_bytes()), "the second window");
        let none = build(1, &Topology::flat(2), 0, &[]).unwrap();
        assert!(!none.get("DSDT").unwrap().windows(8).any(|w| w == b"LNRO0005"));
    }

    #[test]
    fn memory_slots_get_pnp0c80_devices_and_the_ged_scans_them() {
        let with = build(1, &Topology::flat(2), 4, &[]).unwrap();
        let dsdt = with.get("DSDT").unwrap();
        let has = |d: &[u8], s: &[u8]| d.windows(s.len()).any(|w| w == s);
        // PNP0C80 as an EISA id (compressed vendor PNP, product 0C80).
        let pnp0c80 = [0x41, 0xd0, 0x0c, 0x80];
        assert!(has(dsdt, b"MHPC") && has(dsdt, &pnp0c80) && has(dsdt, b"ME03") && !has(dsdt, b"ME04"));
        assert!(has(dsdt, b"MSCN") && has(dsdt, b"MCRS") && has(dsdt, b"MEJ0"));
        assert!(has(dsdt, &(MEM_HOTPLUG_MMIO_BASE as u32).to_le_bytes()), "the controller's registers");
        let without = build(1, &Topology::flat(2), 0, &[]).unwrap();
        let dsdt = without.get("DSDT").unwrap();
        assert!(!has(dsdt, b"MHPC") && !has(dsdt, b"MSCN"), "no slots, no container and no scan");
    }

    /// Disassembles every table with ACPICA and recompiles the DSDT: both must
    /// succeed without errors. Needs `iasl` (Debian's acpica-tools).
    #[test]
    fn tables_pass_acpica() {
        let iasl = Command::new("iasl").arg("-v").output();
        assert!(iasl.is_ok(), "iasl not found: install acpica-tools (the CI script does)");
        let sparse = Topology { threads: 2, cores: 3, dies: 1, packages: 2 };
        for (boot, topology, mem_slots) in [
            (2, Topology::flat(4), 0),
            (1, Topology::flat(288), 0),
            (1, Topology::flat(1024), 0),
            (3, sparse, 0),
            (1, Topology::flat(4), 32),
        ] {
            let max = topology.vcpus();
            let dir = tempfile::tempdir().unwrap();
            let t = build(boot, &topology, mem_slots, &VIRTIO_SAMPLE).unwrap();
            for (name, _, data) in &t.tables {
                if *name == "RSDP" {
                    continue;
                }
                let f = dir.path().join(format!("{}.dat", name.to_lowercase()));
                std::fs::write(&f, data).unwrap();
                let out = Command::new("iasl").arg("-d").arg(&f).current_dir(dir.path()).output().unwrap();
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                assert!(out.status.success(), "iasl -d {name} (max={max}) failed:\n{text}");
                assert!(!text.contains("Error") && !text.contains("error:"), "iasl -d {name}:\n{text}");
            }
            let dsl = dir.path().join("dsdt.dsl");
            let out = Command::new("iasl").arg("-p").arg(dir.path().join("recompiled")).arg(&dsl).output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "recompiling the DSDT (max={max}) failed:\n{text}");
            assert!(text.contains("0 Errors"), "recompiling the DSDT:\n{text}");
        }
    }
}
