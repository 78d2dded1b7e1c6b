//! lithe's interrupt controller setup: KVM's split irqchip. The LAPICs are
//! in KVM; the IOAPIC is lithe's (devices/src/ioapic.rs), and there is no
//! 8259 PIC or PIT: lithe's ACPI is hardware-reduced, so Linux uses neither
//! (`acpi_reduced_hw_init`), as under Cloud Hypervisor.
//!
//! Two reasons for it. KVM's in-kernel IOAPIC keeps 8 destination bits, so
//! with x2APIC ids past 255 it could not reach those CPUs. And KVM's default
//! routing sent GSIs 0-15 to the PIC too, whose vector base is 0 until the
//! guest programs it: the GED's GSI 5 once arrived as vector 5, a #BR, when
//! a resize came while the guest booted (the hostile-guest and boot tests
//! resize that early). With no PIC that path is gone.
//!
//! The routing table: GSI n is IOAPIC pin n's MSI while the guest has the pin
//! unmasked, no entry while it is masked (an irqfd on it then delivers
//! nothing, as a masked edge-triggered pin drops its edges).

use std::sync::Arc;

use kvm_bindings::KVM_IRQ_ROUTING_MSI;
use kvm_bindings::{kvm_enable_cap, kvm_irq_routing_entry, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::VmFd;
use log::error;

use devices::ioapic::{MsiMessage, MsiRoutes, IOAPIC_PINS};

/// Turns on the split irqchip, reserving the IOAPIC's pins as GSIs 0..24
/// (KVM computes which vectors need an EOI exit from the routes of those).
pub fn enable_split_irqchip(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let mut cap = kvm_enable_cap { cap: KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
    cap.args[0] = IOAPIC_PINS as u64;
    vm.enable_cap(&cap)
}

/// The routing table for `routes` (`routes[pin]`: pin's MSI, or masked).
pub fn entries(routes: &[Option<MsiMessage>; IOAPIC_PINS]) -> Vec<kvm_irq_routing_entry> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(pin, msi)| msi.map(|m| (pin, m)))
        .map(|(pin, m)| {
            // flags 0: no device id (lithe has no PCI devices).
            let mut e = kvm_irq_routing_entry { gsi: pin as u32, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
            e.u.msi.address_lo = m.address_lo;
            e.u.msi.address_hi = m.address_hi;
            e.u.msi.data = m.data;
            e
        })
        .collect()
}

/// KVM's GSI routing, as the IOAPIC sees it.
pub struct KvmMsiRoutes(pub Arc<VmFd>);

impl MsiRoutes for KvmMsiRoutes {
    fn update(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) {
        let e = entries(routes);
        let table = match KvmIrqRouting::from_entries(&e) {
            Ok(t) => t,
            Err(err) => {
                error!("ioapic: cannot build a routing table of {} entries: {err:?}", e.len());
                return;
            }
        };
        if let Err(err) = self.0.set_gsi_routing(&table) {
            error!("ioapic: KVM_SET_GSI_ROUTING failed, the guest's interrupt routes did not change: {err}");
        }
    }
}

/// An eventfd registered with KVM as the interrupt for `gsi` (through the
/// IOAPIC's route for that pin).
pub fn irqfd(vm: &VmFd, gsi: u32) -> std::io::Result<devices::EventFdTrigger> {
    let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&fd, gsi).map_err(|e| std::io::Error::other(format!("KVM_IRQFD for GSI {gsi}: {e}")))?;
    Ok(devices::EventFdTrigger::new(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmasked_pins_become_msi_routes_on_their_gsi() {
        let mut routes = [None; IOAPIC_PINS];
        routes[4] = Some(MsiMessage { address_lo: 0xfee0_3000, address_hi: 0, data: 0x24 });
        routes[5] = Some(MsiMessage { address_lo: 0xfee1_f000, address_hi: 0x100, data: 0x30 });
        let e = entries(&routes);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].gsi, e[0].type_), (4, KVM_IRQ_ROUTING_MSI));
        // SAFETY: every entry built here is of type MSI.
        let (lo, hi, data) = unsafe { (e[1].u.msi.address_lo, e[1].u.msi.address_hi, e[1].u.msi.data) };
        assert_eq!((e[1].gsi, lo, hi, data), (5, 0xfee1_f000, 0x100, 0x30));
        assert!(entries(&[None; IOAPIC_PINS]).is_empty());
    }
}
