//! virtio-net's ring logic against chains built in guest memory the way a
//! driver builds them: a frame placed whole or not at all, `num_buffers`
//! when it spans mergeable buffers, chains given back when there are not
//! enough, and bad chains refused without touching the queue's state.

use devices::virtio::net::rx::{place, Delivery};
use devices::virtio::net::tap::VNET_HDR_LEN;
use devices::virtio::net::tx::{gather, TxError, MAX_FRAME};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

/// One-descriptor chains (no NEXT flag: each is its own chain).
fn singles(q: &MockSplitQueue<GuestMemoryMmap>, bufs: &[(u64, u32, u16)]) {
    let descs: Vec<RawDescriptor> =
        bufs.iter().map(|&(a, l, f)| RawDescriptor::from(SplitDescriptor::new(a, l, f, 0))).collect();
    q.add_desc_chains(&descs, 0).unwrap();
}

fn frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    f[..VNET_HDR_LEN].fill(0);
    f
}

#[test]
fn a_frame_that_fits_one_chain_lands_whole_with_num_buffers_one() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    singles(&mq, &[(BUF, 2048, W)]);
    let mut q: Queue = mq.create_queue().unwrap();
    let f = frame(1000);
    assert_eq!(place(&m, &mut q, &f, true), Delivery::Placed(vec![(0, 1000)]));
    let mut got = vec![0u8; 1000];
    m.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(m.read_obj::<u16>(GuestAddress(BUF + 10)).unwrap(), 1, "num_buffers");
}

#[test]
fn a_large_frame_spans_mergeable_buffers_and_says_how_many() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    singles(&mq, &[(BUF, 1536, W), (BUF + 0x1000, 1536, W), (BUF + 0x2000, 1536, W)]);
    let mut q: Queue = mq.create_queue().unwrap();
    let f = frame(4000);
    assert_eq!(place(&m, &mut q, &f, true), Delivery::Placed(vec![(0, 1536), (1, 1536), (2, 928)]));
    assert_eq!(m.read_obj::<u16>(GuestAddress(BUF + 10)).unwrap(), 3, "num_buffers");
    let mut tail = vec![0u8; 928];
    m.read_slice(&mut tail, GuestAddress(BUF + 0x2000)).unwrap();
    assert_eq!(tail, f[3072..]);
}

#[test]
fn too_few_buffers_puts_every_chain_back_for_later() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    singles(&mq, &[(BUF, 1536, W)]);
    let mut q: Queue = mq.create_queue().unwrap();
    assert_eq!(place(&m, &mut q, &frame(4000), true), Delivery::NoBuffers);
    assert_eq!(q.next_avail(), 0, "the chain taken went back");
    // A small frame still fits the chain that was given back.
    assert_eq!(place(&m, &mut q, &frame(100), true), Delivery::Placed(vec![(0, 100)]));
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_a_chain_is_dropped() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    singles(&mq, &[(BUF, 1536, W), (BUF + 0x1000, 1536, W)]);
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(matches!(place(&m, &mut q, &frame(4000), false), Delivery::Dropped(_)));
    assert_eq!(q.next_avail(), 0);
    assert_eq!(place(&m, &mut q, &frame(1500), false), Delivery::Placed(vec![(0, 1500)]));
}

#[test]
fn bad_receive_chains_drop_the_frame_and_leave_the_queue_as_it_was() {
    let m = mem();
    for (what, bufs) in [
        ("device-readable", vec![(BUF, 2048, 0)]),
        ("outside guest memory", vec![(0xffff_0000, 2048, W)]),
        ("first buffer smaller than the header", vec![(BUF, 4, W)]),
        ("empty", vec![(BUF, 0, W)]),
    ] {
        let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
        singles(&mq, &bufs);
        let mut q: Queue = mq.create_queue().unwrap();
        assert!(matches!(place(&m, &mut q, &frame(100), true), Delivery::Dropped(_)), "{what}");
        assert_eq!(q.next_avail(), 0, "{what}");
    }
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    singles(&mq, &[(BUF, 2048, W)]);
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(matches!(place(&m, &mut q, &[0u8; 4], true), Delivery::Dropped(_)), "a frame shorter than its header");
}

fn tx_chain(m: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) -> Result<Vec<u8>, TxError> {
    let mq = MockSplitQueue::create(m, GuestAddress(0x1000), 16);
    let n = bufs.len();
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, f))| {
            let next = if i + 1 < n { f | VRING_DESC_F_NEXT as u16 } else { f };
            RawDescriptor::from(SplitDescriptor::new(a, l, next, i as u16 + 1))
        })
        .collect();
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(m).unwrap();
    let mut out = Vec::new();
    gather(m, chain, &mut out).map(|()| out)
}

#[test]
fn transmit_gathers_header_and_frame_and_refuses_what_no_driver_sends() {
    let m = mem();
    m.write_slice(&[7u8; VNET_HDR_LEN], GuestAddress(BUF)).unwrap();
    m.write_slice(&[9u8; 60], GuestAddress(BUF + 0x1000)).unwrap();
    let out = tx_chain(&m, &[(BUF, VNET_HDR_LEN as u32, 0), (BUF + 0x1000, 60, 0)]).unwrap();
    assert_eq!(out.len(), VNET_HDR_LEN + 60);
    assert!(out[..VNET_HDR_LEN].iter().all(|&b| b == 7) && out[VNET_HDR_LEN..].iter().all(|&b| b == 9));

    assert_eq!(tx_chain(&m, &[(BUF, 100, W)]), Err(TxError::Writable));
    assert_eq!(tx_chain(&m, &[(BUF, 4, 0)]), Err(TxError::TooShort));
    assert_eq!(tx_chain(&m, &[(0xffff_0000, 100, 0)]), Err(TxError::Memory));
    let big = (MAX_FRAME / 2 + 1) as u32;
    assert_eq!(tx_chain(&m, &[(BUF, big, 0), (BUF + 0x10_0000, big, 0)]), Err(TxError::TooLong));
}
