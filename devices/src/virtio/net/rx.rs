//! Receive: one frame from the TAP (virtio-net header first) into the
//! guest's receive buffers. With mergeable buffers a frame may span several
//! chains, and the header's `num_buffers` says how many; without them it
//! must fit one chain. Nothing is marked used until the whole frame has a
//! place, so a frame either arrives whole or waits for more buffers.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::tap::VNET_HDR_LEN;

/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_OFFSET: u64 = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffers; these (head, length) pairs go to the used ring.
    Placed(Vec<(u16, u32)>),
    /// Not enough buffers yet: the chains taken were put back.
    NoBuffers,
    /// It can never fit (no mergeable buffers and a chain too small, or a
    /// chain that is not guest-writable memory): the frame is dropped, the
    /// chains it took are put back.
    Dropped(&'static str),
}

/// Places `frame` (header included) into `rx`'s chains.
pub fn place(mem: &GuestMemoryMmap, rx: &mut Queue, frame: &[u8], mergeable: bool) -> Delivery {
    if frame.len() < VNET_HDR_LEN {
        return Delivery::Dropped("a frame shorter than its header");
    }
    let mut used: Vec<(u16, u32)> = Vec::new();
    let mut header_at: Option<GuestAddress> = None;
    let mut done = 0usize;
    let give_back = |rx: &mut Queue, n: usize| {
        for _ in 0..n {
            rx.go_to_previous_position();
        }
    };
    while done < frame.len() {
        if !mergeable && !used.is_empty() {
            give_back(rx, used.len());
            return Delivery::Dropped("a frame larger than one receive chain, without mergeable buffers");
        }
        let Some(chain) = rx.pop_descriptor_chain(mem) else {
            give_back(rx, used.len());
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        let mut wrote = 0usize;
        for d in chain {
            if !d.is_write_only() {
                give_back(rx, used.len() + 1);
                return Delivery::Dropped("a receive chain with a device-readable buffer");
            }
            let n = (d.len() as usize).min(frame.len() - done);
            if n == 0 {
                break;
            }
            if mem.write_slice(&frame[done..done + n], d.addr()).is_err() {
                give_back(rx, used.len() + 1);
                return Delivery::Dropped("a receive buffer outside guest memory");
            }
            if header_at.is_none() {
                if n < VNET_HDR_LEN {
                    give_back(rx, used.len() + 1);
                    return Delivery::Dropped("a first receive buffer smaller than the header");
                }
                header_at = Some(d.addr());
            }
            done += n;
            wrote += n;
        }
        if wrote == 0 {
            give_back(rx, used.len() + 1);
            return Delivery::Dropped("an empty receive chain");
        }
        used.push((head, wrote as u32));
    }
    let count = used.len() as u16;
    if let Some(at) = header_at {
        if mem.write_obj(count.to_le(), at.unchecked_add(NUM_BUFFERS_OFFSET)).is_err() {
            give_back(rx, used.len());
            return Delivery::Dropped("a receive buffer outside guest memory");
        }
    }
    Delivery::Placed(used)
}
