//! A TAP device, the host end of virtio-net: opened by name, or taken over
//! as an open fd (as Kata hands its TAPs to the VMM). Frames cross it with
//! the 12-byte virtio-net header in front, so the guest's checksum and
//! segmentation offloads pass through untouched.
//!
//! Hand-written rather than a crate: rust-vmm publishes no TAP crate
//! (Firecracker's and Cloud Hypervisor's live in their own trees), and a TAP
//! is one open and three ioctls.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// The virtio-net header both sides use (`virtio_net_hdr_v1`: with
/// `num_buffers`, as every modern device has it).
pub const VNET_HDR_LEN: usize = 12;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("opening /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("{op} on TAP {name}: {source}")]
    Ioctl { op: &'static str, name: String, source: std::io::Error },
    #[error("fd {fd} is not a TAP with virtio-net headers (IFF_TAP | IFF_VNET_HDR), its flags are {flags:#x}")]
    NotVnetTap { fd: RawFd, flags: i16 },
}

pub struct Tap {
    file: File,
    name: String,
}

fn ioctl(
    fd: RawFd,
    op: &'static str,
    name: &str,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> Result<(), TapError> {
    // SAFETY: every request used here takes a pointer to an `IfReq` or an
    // int that lives across the call; the kernel checks the fd's type.
    let r = unsafe { libc::ioctl(fd, request, arg) };
    if r < 0 {
        return Err(TapError::Ioctl { op, name: name.to_string(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

impl Tap {
    /// Opens (creating it if it does not exist and lithe may) the TAP `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl(file.as_raw_fd(), "TUNSETIFF", name, TUNSETIFF, (&mut req as *mut IfReq).cast())?;
        Tap::configure(file, name.to_string())
    }

    /// Takes over an open TAP fd (Kata's `vm.add-net`, `--net fd=`): it must
    /// have been made with virtio-net headers.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        ioctl(raw, "TUNGETIFF", &format!("fd {raw}"), TUNGETIFF, (&mut req as *mut IfReq).cast())?;
        if req.flags & (IFF_TAP | IFF_VNET_HDR) != IFF_TAP | IFF_VNET_HDR {
            return Err(TapError::NotVnetTap { fd: raw, flags: req.flags });
        }
        let len = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        // SAFETY: F_GETFL/F_SETFL on an fd this function owns.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            let source = std::io::Error::last_os_error();
            return Err(TapError::Ioctl { op: "fcntl(O_NONBLOCK)", name, source });
        }
        Tap::configure(file, name)
    }

    /// The header size both sides agree on; no offloads until the guest
    /// accepts them ([`Tap::set_offload`]).
    fn configure(file: File, name: String) -> Result<Tap, TapError> {
        let mut size = VNET_HDR_LEN as libc::c_int;
        ioctl(file.as_raw_fd(), "TUNSETVNETHDRSZ", &name, TUNSETVNETHDRSZ, (&mut size as *mut libc::c_int).cast())?;
        let tap = Tap { file, name };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// What the TAP may hand the guest (`TUN_F_*`): what the guest accepted.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags as the argument itself, not a pointer.
        ioctl(self.file.as_raw_fd(), "TUNSETOFFLOAD", &self.name, TUNSETOFFLOAD, flags as usize as *mut libc::c_void)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame (header first); `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// One frame (header first), whole or not at all.
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
