//! x2APIC, for VMs whose APIC ids go past 254.
//!
//! An xAPIC id is 8 bits and 0xFF is the broadcast id, so a vCPU at APIC id
//! 255 or higher exists only in x2APIC mode (32-bit ids). Three things make a
//! Linux guest use such vCPUs, and lithe does them only when the topology's
//! highest APIC id needs it, so smaller VMs boot exactly as before:
//!
//! * **x2APIC on from the start.** Linux parses the MADT before it turns
//!   x2APIC on itself, and its xAPIC driver refuses Local x2APIC entries
//!   (`apic_id_valid`); it reads the firmware's mode from `IA32_APIC_BASE`
//!   ("x2apic: enabled by BIOS"). So every vCPU starts with `EXTD` set.
//! * **32-bit ids in KVM** (`KVM_CAP_X2APIC_API`, `USE_32BIT_IDS`): KVM then
//!   routes INIT/SIPI and IPIs by full x2APIC id, even to a vCPU that has not
//!   switched its own APIC to x2APIC yet, and keeps the LAPIC state's id 32
//!   bits wide. `DISABLE_BROADCAST_QUIRK` makes 0xFF an ordinary id.
//! * **Extended destination ids** (`KVM_FEATURE_MSI_EXT_DEST_ID` in CPUID
//!   0x4000_0001): without interrupt remapping, Linux caps the usable APIC
//!   ids at 255 unless the hypervisor offers this (`try_to_enable_x2apic`).
//!   KVM leaves the bit for the VMM to set.
//!
//! Interrupts from lithe's devices reach those CPUs too: lithe's IOAPIC is
//! in userspace and turns Linux's extended destination bits into the MSI's
//! high destination bits (devices/src/ioapic.rs). KVM's in-kernel IOAPIC
//! keeps only 8 destination bits, which is one reason lithe does not use it.

use kvm_bindings::{kvm_cpuid_entry2, kvm_enable_cap, KVM_CAP_X2APIC_API};
use kvm_ioctls::VmFd;

use super::topology::Topology;

/// The highest APIC id a Local APIC structure (type 0) may carry, and so
/// the highest xAPIC id: 0xFF is the xAPIC broadcast id, so ACPI says 255
/// and up take an x2APIC structure (and the vCPU x2APIC mode).
pub const MAX_XAPIC_STRUCTURE_ID: u32 = 254;

/// `KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK`.
const X2APIC_API_FLAGS: u64 = 1 | 2;
/// `IA32_APIC_BASE` and its bits.
pub const MSR_IA32_APICBASE: u32 = 0x1b;
const APICBASE_BSP: u64 = 1 << 8;
const APICBASE_EXTD: u64 = 1 << 10;
const APICBASE_ENABLE: u64 = 1 << 11;
/// KVM's paravirtual feature leaf and its extended-destination-id bit.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 1 << 15;

/// Whether `topology` has APIC ids past what xAPIC (and a Local APIC
/// structure) can hold.
pub fn needed(topology: &Topology) -> bool {
    topology.vcpus() > 0 && topology.apic_id(topology.vcpus() - 1) > MAX_XAPIC_STRUCTURE_ID
}

/// Turns on KVM's 32-bit x2APIC ids for the VM (before any vCPU exists).
pub fn enable_32bit_ids(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let mut cap = kvm_enable_cap { cap: KVM_CAP_X2APIC_API, ..Default::default() };
    cap.args[0] = X2APIC_API_FLAGS;
    vm.enable_cap(&cap)
}

/// `IA32_APIC_BASE` for a vCPU that starts in x2APIC mode at `base`.
pub fn apic_base(base: u64, bsp: bool) -> u64 {
    base | APICBASE_ENABLE | APICBASE_EXTD | if bsp { APICBASE_BSP } else { 0 }
}

/// Offers the guest extended destination ids. Returns false if KVM's table
/// has no paravirtual feature leaf to put the bit in.
pub fn offer_ext_dest_id(entries: &mut [kvm_cpuid_entry2]) -> bool {
    let leaf = entries.iter_mut().find(|e| e.function == KVM_CPUID_FEATURES);
    leaf.map(|e| e.eax |= KVM_FEATURE_MSI_EXT_DEST_ID).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_past_254_need_it() {
        assert!(!needed(&Topology::flat(255)), "ids 0..=254");
        assert!(needed(&Topology::flat(256)));
        assert!(!needed(&Topology::flat(1)));
        // 2 packages of 129 cores: 257 vCPUs would not need it flat, but the
        // second package starts at APIC id 256.
        assert!(needed(&Topology { threads: 1, cores: 129, dies: 1, packages: 2 }));
        assert!(!needed(&Topology { threads: 2, cores: 3, dies: 1, packages: 2 }));
    }

    #[test]
    fn apic_base_sets_extd_and_bsp() {
        assert_eq!(apic_base(0xfee0_0000, true), 0xfee0_0d00);
        assert_eq!(apic_base(0xfee0_0000, false), 0xfee0_0c00);
    }

    #[test]
    fn the_ext_dest_id_bit_goes_into_kvms_feature_leaf() {
        let mut t = vec![
            kvm_cpuid_entry2 { function: 0x4000_0000, eax: 0x4000_0001, ..Default::default() },
            kvm_cpuid_entry2 { function: KVM_CPUID_FEATURES, eax: 0x0100_7efb, ..Default::default() },
        ];
        assert!(offer_ext_dest_id(&mut t));
        assert_eq!(t[1].eax, 0x0100_fefb);
        assert_eq!(t[0].eax, 0x4000_0001);
        assert!(!offer_ext_dest_id(&mut t[..1]));
    }
}
