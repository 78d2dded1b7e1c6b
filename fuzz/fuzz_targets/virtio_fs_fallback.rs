//! What lithe serves once a virtio-fs backend is gone: FUSE requests as a
//! guest builds them (the input is guest memory: descriptor table at 0,
//! avail ring at 0x1000, buffers and indirect tables anywhere), popped
//! through a real `virtio-queue` queue with or without event indexes (the
//! input's last byte), answered with `EIO` and completed, notifications
//! turned back on as the fallback does. Loops, indirect tables, chains
//! outside memory, short headers: each ends in an answer or a refusal,
//! never a panic or a hang.
#![no_main]

use devices::virtio::fs::fail::answer_eio;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x10000;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&data[..data.len().min(MEM)], GuestAddress(0)).unwrap();
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_event_idx(data.last().is_some_and(|b| b & 1 == 1));
    q.set_ready(true);
    for _ in 0..32 {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            if !matches!(q.enable_notification(&mem), Ok(true)) {
                break;
            }
            continue;
        };
        let head = chain.head_index();
        let len = answer_eio(&mem, chain).unwrap_or(0);
        let _ = q.add_used(&mem, head, len);
    }
});
