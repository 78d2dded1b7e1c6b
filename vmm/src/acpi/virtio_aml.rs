//! The DSDT's virtio-mmio devices: one `LNRO0005` device each, with its
//! register window and interrupt in `_CRS`, as Linux's virtio-mmio driver
//! probes them on ACPI (no kernel command-line edits needed).

use acpi_tables::aml::{self, Device, Interrupt, Memory32Fixed, Name, ResourceTemplate};

use super::cpu_aml::{bytes, Raw};

/// Where one virtio-mmio device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub len: u64,
    pub gsi: u32,
}

/// `\_SB_.VRnn` for each device, in order.
pub fn devices(list: &[MmioDevice]) -> Vec<Raw> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let mem = Memory32Fixed::new(true, d.base as u32, d.len as u32);
            // Edge-triggered, active high: lithe's irqfds inject one edge per notification.
            let irq = Interrupt::new(true, true, false, false, d.gsi);
            let crs = ResourceTemplate::new(vec![&mem, &irq]);
            let uid = i as u64;
            bytes(&Device::new(
                format!("VR{i:02X}").as_str().into(),
                vec![
                    &Name::new("_HID".into(), &"LNRO0005"),
                    &Name::new("_UID".into(), &uid),
                    &Name::new("_CCA".into(), &aml::ONE),
                    &Name::new("_CRS".into(), &crs),
                ],
            ))
        })
        .collect()
}
