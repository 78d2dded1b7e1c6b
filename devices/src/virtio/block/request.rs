//! One virtio-blk request (virtio 1.2, 5.2.6), read from a guest-built
//! descriptor chain in any layout: the 16-byte header in the readable part,
//! data after it (a write) or in the writable part (a read), the status byte
//! last. Everything is checked against the disk before any I/O.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use virtio_queue::{Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// A chain over lithe's guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

pub const SECTOR_SIZE: u64 = 512;
/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// The serial `GET_ID` returns is at most this long.
pub const ID_BYTES: usize = 20;

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Header {
    kind: u32,
    _ioprio: u32,
    sector: u64,
}

// SAFETY: `Header` is plain old data (two u32s and a u64, no padding), so
// any bytes are a valid value.
unsafe impl ByteValued for Header {}

/// What the guest asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Read { offset: u64, len: usize },
    Write { offset: u64, len: usize },
    Flush,
    GetId,
    Unsupported(u32),
}

/// Why a chain is not a request the disk can serve; the request fails
/// (`IOERR`) if the chain has room for a status byte, else it is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the chain is not readable and writable guest memory: {0}")]
    Chain(String),
    #[error("the header is shorter than 16 bytes")]
    ShortHeader,
    #[error("no writable byte for the status")]
    NoStatus,
    #[error("{len} data bytes are not a whole number of sectors")]
    Unaligned { len: usize },
    #[error("sectors {sector}+{len} bytes run past the disk's {capacity} bytes")]
    OutOfRange { sector: u64, len: usize, capacity: u64 },
    #[error("{segments} data segments exceed seg_max {seg_max}")]
    TooManySegments { segments: usize, seg_max: u32 },
    #[error("{len} data bytes exceed the largest request, {max}")]
    TooLarge { len: usize, max: usize },
    #[error("a write to a read-only disk")]
    ReadOnly,
}

/// The disk a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub capacity: u64,
    pub seg_max: u32,
    pub max_bytes: usize,
    pub read_only: bool,
}

/// A parsed request with its chain's reader (data to write) and writer
/// (data read, then the status byte).
pub struct Request<'a> {
    pub kind: Kind,
    reader: Reader<'a>,
    writer: Writer<'a>,
}

impl<'a> Request<'a> {
    /// Parses `chain` and checks it against `limits`.
    pub fn parse(mem: &'a GuestMemoryMmap, chain: Chain<'a>, limits: &Limits) -> Result<Request<'a>, RequestError> {
        let segments = chain.clone().count();
        let mut reader = Reader::new(mem, chain.clone()).map_err(|e| RequestError::Chain(e.to_string()))?;
        let writer = Writer::new(mem, chain).map_err(|e| RequestError::Chain(e.to_string()))?;
        if writer.available_bytes() == 0 {
            return Err(RequestError::NoStatus);
        }
        let header: Header = reader.read_obj().map_err(|_| RequestError::ShortHeader)?;
        // Header, data segments, status: a chain longer than that by seg_max is refused.
        if segments > limits.seg_max as usize + 2 {
            return Err(RequestError::TooManySegments { segments: segments - 2, seg_max: limits.seg_max });
        }
        let ranged = |len: usize| -> Result<u64, RequestError> {
            if !(len as u64).is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned { len });
            }
            if len > limits.max_bytes {
                return Err(RequestError::TooLarge { len, max: limits.max_bytes });
            }
            let offset = header.sector.checked_mul(SECTOR_SIZE);
            match offset.and_then(|o| o.checked_add(len as u64)) {
                Some(end) if end <= limits.capacity => Ok(offset.unwrap_or(0)),
                _ => Err(RequestError::OutOfRange { sector: header.sector, len, capacity: limits.capacity }),
            }
        };
        let kind = match u32::from_le(header.kind) {
            T_IN => {
                let len = writer.available_bytes() - 1;
                Kind::Read { offset: ranged(len)?, len }
            }
            T_OUT => {
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let len = reader.available_bytes();
                Kind::Write { offset: ranged(len)?, len }
            }
            T_FLUSH => Kind::Flush,
            T_GET_ID => Kind::GetId,
            other => Kind::Unsupported(other),
        };
        Ok(Request { kind, reader, writer })
    }

    /// The data of a write, into `buf` (its length).
    pub fn read_data(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.reader.read_exact(buf)
    }

    /// The data of a read, or the id, from `buf`; what fits before the status byte.
    pub fn write_data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let room = self.writer.available_bytes().saturating_sub(1);
        self.writer.write_all(&buf[..buf.len().min(room)])
    }

    /// Writes the status byte into the chain's last writable byte; returns
    /// the used length (the data written, and the status).
    pub fn finish(mut self, status: u8) -> u32 {
        let written = self.writer.bytes_written();
        let left = self.writer.available_bytes();
        let ok = match left {
            0 => false,
            1 => self.writer.write_obj(status).is_ok(),
            n => self.writer.split_at(n - 1).is_ok_and(|mut tail| tail.write_obj(status).is_ok()),
        };
        (written + usize::from(ok)) as u32
    }
}

/// Fails a chain that could not be parsed: `IOERR` in its last writable
/// byte, if it has one. Returns the used length.
pub fn fail_chain(mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
    let Ok(mut writer) = Writer::new(mem, chain) else { return 0 };
    let n = writer.available_bytes();
    if n == 0 {
        return 0;
    }
    if n > 1 {
        if let Ok(mut tail) = writer.split_at(n - 1) {
            return if tail.write_obj(S_IOERR).is_ok() { n as u32 } else { 0 };
        }
        return 0;
    }
    if writer.write_obj(S_IOERR).is_ok() {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const LIMITS: Limits = Limits { capacity: 1 << 20, seg_max: 4, max_bytes: 1 << 16, read_only: false };

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(Header { kind: kind.to_le(), _ioprio: 0, sector: sector.to_le() }, GuestAddress(HDR)).unwrap();
    }

    fn parse_kind(m: &GuestMemoryMmap, descs: &[RawDescriptor], limits: &Limits) -> Result<Kind, RequestError> {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        Request::parse(m, chain, limits).map(|r| r.kind)
    }

    #[test]
    fn reads_writes_flushes_and_ids_parse_in_any_layout() {
        let m = mem();
        header(&m, T_IN, 2);
        let read = [desc(HDR, 16, false), desc(DATA, 1024, true), desc(STATUS, 1, true)];
        assert_eq!(parse_kind(&m, &read, &LIMITS), Ok(Kind::Read { offset: 1024, len: 1024 }));
        // The status byte shares the data's descriptor: still one sector of data.
        let merged = [desc(HDR, 16, false), desc(DATA, 513, true)];
        assert_eq!(parse_kind(&m, &merged, &LIMITS), Ok(Kind::Read { offset: 1024, len: 512 }));
        header(&m, T_OUT, 0);
        let write = [desc(HDR, 16, false), desc(DATA, 512, false), desc(DATA + 512, 512, false), desc(STATUS, 1, true)];
        assert_eq!(parse_kind(&m, &write, &LIMITS), Ok(Kind::Write { offset: 0, len: 1024 }));
        header(&m, T_FLUSH, 0);
        assert_eq!(parse_kind(&m, &[desc(HDR, 16, false), desc(STATUS, 1, true)], &LIMITS), Ok(Kind::Flush));
        header(&m, T_GET_ID, 0);
        let id = [desc(HDR, 16, false), desc(DATA, 20, true), desc(STATUS, 1, true)];
        assert_eq!(parse_kind(&m, &id, &LIMITS), Ok(Kind::GetId));
        header(&m, 99, 0);
        assert_eq!(parse_kind(&m, &id, &LIMITS), Ok(Kind::Unsupported(99)));
    }

    #[test]
    fn bad_chains_are_refused_with_the_reason() {
        let m = mem();
        header(&m, T_IN, 0);
        assert_eq!(parse_kind(&m, &[desc(HDR, 16, false)], &LIMITS).unwrap_err(), RequestError::NoStatus);
        assert_eq!(
            parse_kind(&m, &[desc(HDR, 8, false), desc(STATUS, 1, true)], &LIMITS).unwrap_err(),
            RequestError::ShortHeader
        );
        let odd = [desc(HDR, 16, false), desc(DATA, 100, true), desc(STATUS, 1, true)];
        assert_eq!(parse_kind(&m, &odd, &LIMITS).unwrap_err(), RequestError::Unaligned { len: 100 });
        header(&m, T_IN, (1 << 20) / 512);
        let past = [desc(HDR, 16, false), desc(DATA, 512, true), desc(STATUS, 1, true)];
        assert!(matches!(parse_kind(&m, &past, &LIMITS), Err(RequestError::OutOfRange { .. })));
        header(&m, T_IN, u64::MAX / 4);
        assert!(matches!(parse_kind(&m, &past, &LIMITS), Err(RequestError::OutOfRange { .. })), "no overflow");
        header(&m, T_OUT, 0);
        let ro = Limits { read_only: true, ..LIMITS };
        let write = [desc(HDR, 16, false), desc(DATA, 512, false), desc(STATUS, 1, true)];
        assert_eq!(parse_kind(&m, &write, &ro).unwrap_err(), RequestError::ReadOnly);
        let many: Vec<_> = std::iter::once(desc(HDR, 16, false))
            .chain((0..5).map(|i| desc(DATA + i * 512, 512, false)))
            .chain([desc(STATUS, 1, true)])
            .collect();
        assert!(matches!(parse_kind(&m, &many, &LIMITS), Err(RequestError::TooManySegments { .. })));
        let outside = [desc(HDR, 16, false), desc(64 << 20, 512, true), desc(STATUS, 1, true)];
        assert!(matches!(parse_kind(&m, &outside, &LIMITS), Err(RequestError::Chain(_))));
    }

    #[test]
    fn a_failed_chain_gets_ioerr_in_its_last_byte() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        m.write_obj(0xffu8, GuestAddress(STATUS + 9)).unwrap();
        let chain = q.build_desc_chain(&[desc(HDR, 4, false), desc(STATUS, 10, true)]).unwrap();
        assert_eq!(fail_chain(&m, chain), 10);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS + 9)).unwrap(), S_IOERR);
        let chain = q.build_desc_chain(&[desc(HDR, 4, false)]).unwrap();
        assert_eq!(fail_chain(&m, chain), 0, "no writable byte: nothing to say it with");
    }
}
