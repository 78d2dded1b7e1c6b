//! The GSI routing of lithe's in-kernel irqchip: KVM's default table, except
//! that the GSIs lithe raises on its own (the GED's) reach the IOAPIC only.
//!
//! KVM routes GSIs 0–15 to both the 8259 PIC and the IOAPIC by default. Until
//! the guest programs the PIC (Linux does so late in `start_kernel`), the
//! PIC's vector base is 0, so an interrupt on its pin 5 arrives as vector 5:
//! a #BR exception. A resize asked for while the kernel boots raised exactly
//! that: the guest died with `bounds: 0000 [#1]` and reset. Through the
//! IOAPIC the pin stays masked until the guest's driver unmasks it, and the
//! pending hotplug work waits in the controller's registers. (Cloud
//! Hypervisor has no PIC at all: its IOAPIC is in userspace.)

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP};
use kvm_bindings::{KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};

/// KVM's IOAPIC has 24 pins.
const IOAPIC_PINS: u32 = 24;

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default entries (`kvm_setup_default_irq_routing`), with the PIC
/// route left out for each GSI in `ioapic_only`.
pub fn entries(ioapic_only: &[u32]) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 && !ioapic_only.contains(&gsi) {
            let chip = if gsi < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
            out.push(irqchip_entry(gsi, chip, gsi % 8));
        }
        out.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    out
}

/// The same, as `KVM_SET_GSI_ROUTING` takes it.
pub fn table(ioapic_only: &[u32]) -> KvmIrqRouting {
    let e = entries(ioapic_only);
    KvmIrqRouting::from_entries(&e).expect("24 pins' entries fit a routing table")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(e: &[kvm_irq_routing_entry], gsi: u32) -> Vec<(u32, u32)> {
        e.iter()
            .filter(|r| r.gsi == gsi)
            // SAFETY: every entry built here is of type IRQCHIP.
            .map(|r| unsafe { (r.u.irqchip.irqchip, r.u.irqchip.pin) })
            .collect()
    }

    #[test]
    fn the_ged_gsi_reaches_the_ioapic_only_and_the_rest_stays_as_kvm_has_it() {
        let e = entries(&[5]);
        assert_eq!(routes(&e, 5), vec![(KVM_IRQCHIP_IOAPIC, 5)]);
        assert_eq!(routes(&e, 4), vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]);
        assert_eq!(routes(&e, 0), vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 0)]);
        assert_eq!(routes(&e, 2), vec![(KVM_IRQCHIP_PIC_MASTER, 2), (KVM_IRQCHIP_IOAPIC, 2)]);
        assert_eq!(routes(&e, 9), vec![(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]);
        assert_eq!(routes(&e, 23), vec![(KVM_IRQCHIP_IOAPIC, 23)]);
        assert_eq!(e.len(), 24 + 15);
        assert_eq!(table(&[5]).as_slice().len(), e.len());
    }
}
