//! virtio-net's ring paths as a guest drives them: the input is guest memory
//! (descriptor table at 0, avail ring at 0x1000, buffers anywhere) and a
//! frame length; frames are placed into the receive queue (mergeable or
//! not) and transmit chains gathered, through a real `virtio-queue` queue.
//! Loops, overlaps, readable receive buffers, chains outside memory or past
//! the largest frame: each must end in a placed, waiting or dropped frame
//! (or a refused transmit chain), never a panic, a hang or a frame placed
//! in part.
#![no_main]

use devices::virtio::net::rx::{place, Delivery};
use devices::virtio::net::tap::VNET_HDR_LEN;
use devices::virtio::net::tx::{gather, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vm_memory::Bytes;

const MEM: usize = 0x10000;

fn queue() -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&data[..data.len().min(MEM)], GuestAddress(0)).unwrap();
    let (len, mergeable) = match data {
        [a, b, c, ..] => (usize::from(u16::from_le_bytes([*a, *b])), c & 1 == 1),
        _ => (64, true),
    };
    let frame: Vec<u8> = (0..len.max(VNET_HDR_LEN)).map(|i| i as u8).collect();
    let mut rx = queue();
    for _ in 0..8 {
        let before = rx.next_avail();
        match place(&mem, &mut rx, &frame, mergeable) {
            Delivery::Placed(used) => {
                let total: usize = used.iter().map(|&(_, l)| l as usize).sum();
                assert_eq!(total, frame.len(), "a frame is placed whole");
                assert!(mergeable || used.len() == 1);
                for (head, l) in used {
                    let _ = rx.add_used(&mem, head, l);
                }
            }
            Delivery::NoBuffers | Delivery::Dropped(_) => {
                assert_eq!(rx.next_avail(), before, "chains not used are given back");
                break;
            }
        }
    }
    let mut tx = queue();
    let mut buf = Vec::new();
    for _ in 0..8 {
        let Some(chain) = tx.pop_descriptor_chain(&mem) else { break };
        let head = chain.head_index();
        if gather(&mem, chain, &mut buf).is_ok() {
            assert!(buf.len() >= VNET_HDR_LEN && buf.len() <= MAX_FRAME);
        }
        let _ = tx.add_used(&mem, head, 0);
    }
});
