//! virtio-blk requests as a guest builds them: the input is guest memory
//! (descriptor table at 0, avail ring at 0x1000, buffers anywhere), popped
//! through a real `virtio-queue` queue and parsed, served against nothing
//! (reads fill zeros, writes are read out) and completed. Loops, overlaps,
//! chains pointing outside memory or past `seg_max`: each must end in a
//! request or an `IOERR`, never a panic or a hang.
#![no_main]

use devices::virtio::block::request::{fail_chain, Kind, Limits, Request, S_OK};
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
    q.set_ready(true);
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let limits = Limits { capacity: 1 << 20, seg_max: 8, max_bytes: 1 << 16, read_only };
    for _ in 0..32 {
        let Some(chain) = q.pop_descriptor_chain(&mem) else { break };
        let head = chain.head_index();
        let len = match Request::parse(&mem, chain.clone(), &limits) {
            Ok(mut r) => {
                match r.kind.clone() {
                    Kind::Read { len, .. } => {
                        assert!(len <= limits.max_bytes);
                        let _ = r.write_data(&vec![0; len]);
                    }
                    Kind::Write { len, .. } => {
                        assert!(!read_only && len <= limits.max_bytes);
                        let _ = r.read_data(&mut vec![0; len]);
                    }
                    _ => {}
                }
                r.finish(S_OK)
            }
            Err(_) => fail_chain(&mem, chain),
        };
        let _ = q.add_used(&mem, head, len);
    }
});
