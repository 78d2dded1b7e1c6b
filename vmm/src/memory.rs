//! Guest physical memory: the layout lithe uses and the RAM backing it.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_9000  PML4 / PDPT / PD (identity map, 1 GiB)
//! 0x0000_0520  IDT (empty)            0x0002_0000  kernel command line
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top         0x0009_fc00  EBDA .. 0x000f_ffff reserved:
//!                                     DSDT at 0xa_0000, RSDP and the other ACPI tables at 0xe_0000
//! 0x0010_0000  RAM (kernel, initramfs at the top of low RAM)
//! 0xc000_0000  MMIO hole: GED, CPU hotplug controller, IOAPIC, LAPIC, KVM's TSS
//! 0x1_0000_0000  RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub type GuestMemory = GuestMemoryMmap<()>;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux x86's COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
/// The BIOS area: the RSDP (where a legacy scan finds it), XSDT, FADT, MADT.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// The DSDT, below the BIOS area: with a device per possible vCPU it is
/// the one table that grows past 128 KiB (about 130 bytes per vCPU).
pub const ACPI_DSDT_START: u64 = 0xa0000;
pub const ACPI_DSDT_END: u64 = ACPI_START;
pub const HIMEM_START: u64 = 0x100000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
pub const MMIO_HOLE_SIZE: u64 = FOUR_GIB - MMIO_HOLE_START;

/// Device MMIO blocks inside the hole. Virtio-mmio devices get one 4 KiB
/// window each from here (the device manager hands them out in order).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const GED_MMIO_BASE: u64 = 0xfeb0_0000;
pub const CPU_HOTPLUG_MMIO_BASE: u64 = 0xfeb0_1000;
pub const MEM_HOTPLUG_MMIO_BASE: u64 = 0xfeb0_2000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map on Intel.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

// The fixed structures must not overlap each other or the kernel; devices
// must sit inside the MMIO hole without overlapping. Checked at compile time.
const _: () = {
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER + 0x10);
    assert!(GED_MMIO_BASE >= MMIO_HOLE_START && GED_MMIO_BASE + 4 <= CPU_HOTPLUG_MMIO_BASE);
    assert!(CPU_HOTPLUG_MMIO_BASE + 0x1000 <= MEM_HOTPLUG_MMIO_BASE);
    assert!(MEM_HOTPLUG_MMIO_BASE + 0x1000 <= IOAPIC_BASE);
    assert!(EBDA_START <= ACPI_DSDT_START && ACPI_DSDT_END <= ACPI_START);
    assert!(IOAPIC_BASE < LAPIC_BASE && LAPIC_BASE < KVM_IDENTITY_MAP_ADDR);
    assert!(KVM_TSS_ADDR + 3 * 0x1000 <= FOUR_GIB);
};

/// The RAM regions for `size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > low {
        regions.push((GuestAddress(FOUR_GIB), (size - low) as usize));
    }
    regions
}

/// End of RAM below the hole (exclusive).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Map { size: u64, source: vm_memory::mmap::FromRangesError },
    #[error("cannot make a {size}-byte memfd for shared guest memory: {source}")]
    Memfd { size: u64, source: std::io::Error },
}

/// Allocates guest RAM: anonymous and private, or (`shared`, Cloud
/// Hypervisor's `memory.shared`) one memfd mapped shared, so a vhost-user
/// backend can map the same pages from the fd lithe sends it.
pub fn create_guest_memory(size: u64, shared: bool) -> Result<GuestMemory, MemoryError> {
    let regions = ram_regions(size);
    if !shared {
        return GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Map { size, source });
    }
    let memfd = memfd("lithe-guest-ram", size).map_err(|source| MemoryError::Memfd { size, source })?;
    let mut offset = 0u64;
    let with_files: Vec<_> = regions
        .iter()
        .map(|&(addr, len)| {
            let file = Some(vm_memory::FileOffset::from_arc(memfd.clone(), offset));
            offset += len as u64;
            (addr, len, file)
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(with_files).map_err(|source| MemoryError::Map { size, source })
}

/// An anonymous file of `size` bytes (`memfd_create`), close-on-exec.
pub(crate) fn memfd(name: &str, size: u64) -> std::io::Result<std::sync::Arc<std::fs::File>> {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned `fd`; nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(std::sync::Arc::new(file))
}

/// Asks for transparent huge pages on guest RAM (`memory.thp`, on by
/// default as in Cloud Hypervisor). Advice only: a host without THP says
/// no, which is logged and harmless.
pub fn advise_huge_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        // SAFETY: madvise on a live mapping owned by `mem`, with its exact
        // address and length; MADV_HUGEPAGE changes no contents.
        let r = unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if r != 0 {
            log::info!("guest RAM: no transparent huge pages ({})", std::io::Error::last_os_error());
        }
    }
}

/// Gives every region of `mem` to the VM, one KVM memory slot each.
///
/// # Safety
/// `mem` must outlive the VM and every vCPU that can run in it: KVM keeps
/// the host addresses of the mappings.
pub unsafe fn register_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), kvm_ioctls::Error> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps for as long as the VM can use it (this function's contract).
        unsafe { vm.set_user_memory_region(r) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let m = create_guest_memory(128 << 20, false).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(m.address_in_range(GuestAddress((128 << 20) - 1)));
        assert!(!m.address_in_range(GuestAddress(128 << 20)));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(GuestAddress(0), MMIO_HOLE_START as usize), (GuestAddress(FOUR_GIB), (1 << 30) as usize)]);
        assert_eq!(low_ram_end(4 << 30), MMIO_HOLE_START);
    }

    #[test]
    fn shared_memory_is_one_memfd_mapped_shared() {
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;
        let m = create_guest_memory(8 << 20, true).unwrap();
        let region = m.iter().next().unwrap();
        let f = region.file_offset().expect("a file-backed region");
        m.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        // What a backend mapping the same fd sees: the guest's write.
        let mut b = [0u8; 4];
        f.file().read_exact_at(&mut b, f.start() + 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert!(create_guest_memory(8 << 20, false).unwrap().iter().all(|r| r.file_offset().is_none()));
    }
}
