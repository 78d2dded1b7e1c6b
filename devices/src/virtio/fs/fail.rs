//! What the guest gets once its backend is gone: lithe answers every FUSE
//! request itself with `EIO`, so calls on the mount fail instead of hanging.
//! Forgets expect no answer and get none.

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// `linux/fuse.h` opcodes that expect no reply.
const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

// SAFETY: plain old data (integers only, no padding: 4+4+8+8+4+4+4+2+2 = 40
// bytes, 8-aligned), so any bytes are a valid value.
unsafe impl ByteValued for InHeader {}

/// `struct fuse_out_header`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

// SAFETY: plain old data (two 32-bit integers and a u64, no padding).
unsafe impl ByteValued for OutHeader {}

/// Answers one request with `-EIO`; the bytes written to the chain (0 for a
/// forget, or a chain too short to carry a header, which is logged by the caller).
pub fn answer_eio(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<u32, &'static str> {
    let mut reader = Reader::new(mem, chain.clone()).map_err(|_| "the chain is not guest memory")?;
    let header: InHeader = reader.read_obj().map_err(|_| "the request is shorter than a FUSE header")?;
    if header.opcode == FUSE_FORGET || header.opcode == FUSE_BATCH_FORGET {
        return Ok(0);
    }
    let mut writer = Writer::new(mem, chain).map_err(|_| "the chain is not guest memory")?;
    let out = OutHeader { len: std::mem::size_of::<OutHeader>() as u32, error: -libc::EIO, unique: header.unique };
    writer.write_obj(out).map_err(|_| "the chain has no room for a FUSE reply header")?;
    Ok(out.len)
}
