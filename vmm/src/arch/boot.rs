//! Linux 64-bit boot protocol: load the kernel (ELF vmlinux or bzImage), the
//! initramfs and the command line, and write the zero page with the e820 map.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::{
    low_ram_end, GuestMemory, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, FOUR_GIB, HIMEM_START,
    MMIO_HOLE_START, ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// Where a bzImage's 64-bit entry point sits relative to its load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The highest address an initramfs may end at by default (boot protocol).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("loading kernel {path}: not an ELF vmlinux ({elf}) nor a bzImage ({bzimage})")]
    Kernel { path: String, elf: loader::Error, bzimage: loader::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM below {limit:#x}")]
    InitramfsTooLarge { path: String, size: u64, limit: u64 },
    #[error("reading initramfs {path} into guest memory: {source}")]
    Initramfs { path: String, source: vm_memory::GuestMemoryError },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry(pub GuestAddress);

/// Loads `kernel` into guest memory; returns the entry point and, for a
/// bzImage, the setup header the zero page must carry.
pub fn load_kernel(
    mem: &GuestMemory,
    kernel: &Path,
) -> Result<(KernelEntry, Option<linux_loader::loader::bootparam::setup_header>), BootError> {
    let path = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::Open { path: path.clone(), source })?;
    let elf = match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => return Ok((KernelEntry(r.kernel_load), None)),
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => Ok((KernelEntry(r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)), r.setup_header)),
        Err(bzimage) => Err(BootError::Kernel { path, elf, bzimage }),
    }
}

/// Places the initramfs at the top of low RAM (page aligned); returns (address, size).
pub fn load_initramfs(mem: &GuestMemory, path: &Path, ram_size: u64, addr_max: u64) -> Result<(u64, u64), BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open { path: name.clone(), source })?;
    let size = file.metadata().map_err(|source| BootError::Open { path: name.clone(), source })?.len();
    let top = low_ram_end(ram_size).min(addr_max + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= HIMEM_START)
        .ok_or(BootError::InitramfsTooLarge { path: name.clone(), size, limit: top })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::Initramfs { path: name, source })?;
    Ok((addr, size))
}

/// Writes `cmdline` where the zero page will point.
pub fn load_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c).map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(cmdline.len())
}

/// The e820 map for `ram_size` bytes of RAM.
pub fn e820_map(ram_size: u64) -> Vec<boot_e820_entry> {
    let e = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    let low_end = low_ram_end(ram_size);
    let mut map = vec![
        e(0, EBDA_START, E820_RAM),
        e(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        e(HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if ram_size > MMIO_HOLE_START {
        map.push(e(FOUR_GIB, ram_size - low_end, E820_RAM));
    }
    map
}

/// Writes the zero page.
pub fn write_zero_page(
    mem: &GuestMemory,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    ram_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = ACPI_START;
    let map = e820_map(ram_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::ZeroPage)
}

/// Loads everything the kernel needs; returns the entry point.
pub fn load_payload(
    mem: &GuestMemory,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    ram_size: u64,
) -> Result<KernelEntry, BootError> {
    let (entry, header) = load_kernel(mem, kernel)?;
    let addr_max = header.map(|h| u64::from(h.initrd_addr_max)).filter(|m| *m != 0).unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initrd = initramfs.map(|p| load_initramfs(mem, p, ram_size, addr_max)).transpose()?;
    let cmdline_len = load_cmdline(mem, cmdline)?;
    write_zero_page(mem, header, cmdline_len, initrd, ram_size)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_hole() {
        let m = e820_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!({ m[1].addr }, EBDA_START);
        assert_eq!({ m[1].r#type }, E820_RESERVED);
        assert_eq!({ m[2].addr } + { m[2].size }, 128 << 20);
        let big = e820_map(5 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!({ big[3].addr }, FOUR_GIB);
        assert_eq!({ big[3].size }, (5u64 << 30) - MMIO_HOLE_START);
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram_and_must_fit() {
        let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x5a; 10000]).unwrap();
        let (addr, size) = load_initramfs(&mem, f.path(), 64 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 9999)).unwrap(), 0x5a);
        let mut huge = tempfile::NamedTempFile::new().unwrap();
        huge.as_file_mut().set_len(80 << 20).unwrap();
        assert!(matches!(
            load_initramfs(&mem, huge.path(), 64 << 20, DEFAULT_INITRD_ADDR_MAX),
            Err(BootError::InitramfsTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_kernel_is_rejected_with_both_reasons() {
        let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 8192]).unwrap();
        let err = load_kernel(&mem, f.path()).unwrap_err();
        assert!(matches!(err, BootError::Kernel { .. }), "{err}");
        assert!(matches!(load_kernel(&mem, Path::new("/nonexistent")), Err(BootError::Open { .. })));
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_rsdp_and_e820() {
        let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
        let n = load_cmdline(&mem, "console=ttyS0").unwrap();
        write_zero_page(&mem, None, n, Some((0x300_0000, 0x1000)), 64 << 20).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(p.e820_entries, 3);
        let mut raw = [0u8; 14];
        mem.read_slice(&mut raw, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&raw, b"console=ttyS0\0");
        assert!(load_cmdline(&mem, &"x".repeat(CMDLINE_MAX_SIZE + 10)).is_err());
    }
}
