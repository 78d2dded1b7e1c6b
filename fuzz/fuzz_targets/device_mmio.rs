//! Sequences of guest accesses (any offset, any width, any value) to the
//! CPU and memory hotplug controllers, the GED, the serial port and the
//! IOAPIC, checked against the controllers' invariants: the VMM never hears of a vCPU id out of range,
//! never of an eject it did not get from the EJECT register, and the
//! devices keep answering.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::cpu_hotplug::{CpuHotplugController, CpuHotplugHost, MMIO_LEN, REG_EJECT};
use devices::ged::{Ged, GED_MMIO_LEN};
use devices::interrupt::InterruptTrigger;
use devices::mem_hotplug::{MemHotplugController, MemHotplugHost, SlotView, MMIO_LEN as MEM_MMIO_LEN};
use devices::ioapic::{Ioapic, MsiMessage, MsiRoutes, IOAPIC_MMIO_LEN, IOAPIC_PINS};
use devices::serial::{SerialDevice, COM1_PORT_LEN};
use devices::EventFdTrigger;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

const MAX: u32 = 40;

#[derive(Default)]
struct Host {
    calls: Mutex<Vec<(u8, u32)>>,
    present: AtomicU32,
}

impl CpuHotplugHost for Host {
    fn present_word(&self, word: usize) -> u32 {
        if word == 0 {
            self.present.load(Ordering::Relaxed)
        } else {
            0
        }
    }
    fn eject(&self, id: u32) {
        self.calls.lock().unwrap().push((b'e', id));
    }
    fn ost(&self, id: u32, _event: u32, _status: u32) {
        self.calls.lock().unwrap().push((b'o', id));
    }
}

const SLOTS: usize = 6;

#[derive(Default)]
struct MemHost(Mutex<Vec<usize>>);

impl MemHotplugHost for MemHost {
    fn slot(&self, index: usize) -> Option<SlotView> {
        (index < SLOTS).then_some(SlotView { base: (index as u64 + 32) << 27, len: 1 << 27, enabled: index % 2 == 0 })
    }
    fn eject(&self, index: usize) {
        self.0.lock().unwrap().push(index);
    }
    fn ost(&self, index: usize, _event: u32, _status: u32) {
        self.0.lock().unwrap().push(index);
    }
}

struct Count;
impl InterruptTrigger for Count {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Routes;
impl MsiRoutes for Routes {
    fn update(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) {
        // KVM refuses x2APIC-format routes with address_hi bits 0..=7 set.
        assert!(routes.iter().flatten().all(|m| m.address_hi & 0xff == 0), "{routes:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let ioapic = Ioapic::new(Arc::new(Routes));
    let host = Arc::new(Host::default());
    let ctl = CpuHotplugController::new(MAX, host.clone());
    let ged = Ged::new(Count);
    let mem_host = Arc::new(MemHost::default());
    let mem = MemHotplugController::new(mem_host.clone(), SLOTS);
    let serial = SerialDevice::new(
        EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        Box::new(std::io::sink()),
    );
    let mut ejects_written = 0usize;
    for op in data.chunks_exact(8) {
        let kind = op[0] % 13;
        let off = u64::from(u16::from_le_bytes([op[1], op[7]]));
        let width = [1usize, 2, 4, 8, 3][usize::from(op[2] % 5)];
        let value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        match kind {
            0 => ctl.read(off % MMIO_LEN, &mut bytes[..width]),
            1 => {
                let off = off % MMIO_LEN;
                if off == REG_EJECT && width == 4 && value < MAX {
                    ejects_written += 1;
                }
                ctl.write(off, &bytes[..width]);
            }
            2 => ctl.request_insert(value % (MAX + 8)),
            3 => ctl.request_remove(value % (MAX + 8)),
            4 => {
                let _ = ctl.withdraw_insert(value % (MAX + 8));
                host.present.store(value, Ordering::Relaxed);
            }
            5 => ged.read(off % (GED_MMIO_LEN + 4), &mut bytes[..width]),
            6 => ged.write(off % (GED_MMIO_LEN + 4), &bytes[..width]),
            8 => ioapic.write(off % (IOAPIC_MMIO_LEN + 4), &bytes[..width]),
            9 => ioapic.read(off % (IOAPIC_MMIO_LEN + 4), &mut bytes[..width]),
            10 => mem.read(off % (MEM_MMIO_LEN + 8), &mut bytes[..width]),
            11 => mem.write(off % (MEM_MMIO_LEN + 8), &bytes[..width]),
            12 if op[1] & 1 == 0 => mem.request_insert(value as usize % (SLOTS + 4)),
            12 => mem.request_remove(value as usize % (SLOTS + 4)),
            _ => {
                if op[1] & 1 == 0 {
                    serial.write(off % (COM1_PORT_LEN + 2), &bytes[..width.min(2)]);
                } else {
                    serial.read(off % (COM1_PORT_LEN + 2), &mut bytes[..width.min(2)]);
                }
            }
        }
    }
    let calls = host.calls.lock().unwrap();
    assert!(calls.iter().all(|&(_, id)| id < MAX), "the host heard of an out-of-range id: {calls:?}");
    assert!(calls.iter().filter(|(k, _)| *k == b'e').count() <= ejects_written);
    for id in MAX..MAX + 8 {
        assert!(!ctl.is_pending(id));
    }
    assert!(mem_host.0.lock().unwrap().iter().all(|&i| i < SLOTS), "the memory host heard of a slot past the last");
    let (ins, rem) = mem.pending();
    assert_eq!((ins | rem) >> SLOTS, 0, "no event for a slot past the last");
    assert_eq!(ins & rem, 0, "a slot is never both inserting and removing");
    // The IOAPIC's read-only entry bits (delivery status, remote IRR) and reserved bits stay clear.
    assert!(ioapic.entries().iter().all(|e| e & (1 << 12 | 1 << 14 | 0x7fff << 17 | 0xffff << 32) == 0));
    // Still answering: a scan reads every word.
    let mut w = [0u8; 4];
    for word in 0..ctl.words() as u64 {
        ctl.read(word * 4, &mut w);
    }
});
