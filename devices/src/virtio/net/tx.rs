//! Transmit: one chain of device-readable buffers (virtio-net header, then
//! the frame) gathered into one buffer for one write to the TAP.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::tap::VNET_HDR_LEN;

/// The largest frame a guest may send: a 64 KiB TSO frame, its Ethernet
/// header and the virtio-net header.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("a transmit chain with a device-writable buffer")]
    Writable,
    #[error("a transmit chain longer than {MAX_FRAME} bytes")]
    TooLong,
    #[error("a transmit chain shorter than the virtio-net header")]
    TooShort,
    #[error("a transmit buffer outside guest memory")]
    Memory,
}

/// Copies the chain's buffers into `buf` (cleared first).
pub fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Result<(), TxError> {
    buf.clear();
    for d in chain {
        if d.is_write_only() {
            return Err(TxError::Writable);
        }
        let len = d.len() as usize;
        if buf.len() + len > MAX_FRAME {
            return Err(TxError::TooLong);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], d.addr()).map_err(|_| TxError::Memory)?;
    }
    if buf.len() < VNET_HDR_LEN {
        return Err(TxError::TooShort);
    }
    Ok(())
}
