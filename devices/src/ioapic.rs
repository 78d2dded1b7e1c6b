//! An I/O APIC in userspace, for KVM's split irqchip (the LAPICs stay in
//! KVM): the 82093AA register window, 24 redirection entries, and for each
//! unmasked pin the MSI that KVM delivers when the pin fires.
//!
//! Why not KVM's in-kernel IOAPIC: its redirection entries keep 8
//! destination bits, so it cannot reach a CPU at APIC id 256 or higher.
//! Linux, offered extended destination ids (x2APIC without interrupt
//! remapping), writes APIC id bits 8..=14 into bits 49..=55 of an entry; here
//! they become the MSI's high destination bits (KVM's 32-bit x2APIC format),
//! as Cloud Hypervisor's and QEMU's userspace IOAPICs do.
//!
//! How a pin fires: lithe's devices raise GSIs through irqfds, and KVM's GSI
//! routing maps GSI n to pin n's MSI. The routes change only when the guest
//! rewrites an entry ([`MsiRoutes::update`]), so firing costs no exit.
//! Edge-triggered pins (what lithe's devices are) need nothing else; for a
//! pin the guest sets level-triggered, KVM exits on its EOI
//! ([`Ioapic::end_of_interrupt`]) and the remote IRR bit is cleared.
//!
//! Hand-written: rust-vmm has no IOAPIC crate (vm-superio has the serial
//! port and the i8042, not this).
//!
//! Guest writes of bad widths, offsets or register indexes are logged and
//! ignored; read-only bits keep their value.

use std::sync::{Arc, Mutex};

use log::debug;

use crate::bus::BusDevice;
use crate::guest_warn;

pub const IOAPIC_PINS: usize = 24;
/// The MMIO window: IOREGSEL at 0x00, IOWIN at 0x10.
pub const IOAPIC_MMIO_LEN: u64 = 0x20;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIR_BASE: u32 = 0x10;
/// 0x11 (the 82093AA's version) with the highest entry's index in bits 16..=23.
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);

const RTE_MASKED: u64 = 1 << 16;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Bits the guest may write: vector, delivery mode, destination mode,
/// polarity, trigger mode, mask (0..=16 but 12 and 14), and the
/// destination with its extended bits (48..=63).
const RTE_WRITABLE: u64 = (0x1_ffff & !(RTE_DELIVERY_STATUS | RTE_REMOTE_IRR)) | (0xffff << 48);

/// An MSI as KVM's routing takes it, in its 32-bit x2APIC format: the
/// destination's bits 8..=31 in `address_hi` bits 8..=31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
}

/// Where the IOAPIC's routes go: KVM's GSI routing table.
pub trait MsiRoutes: Send + Sync {
    /// `routes[pin]`: the MSI pin `pin` sends, `None` while it is masked.
    fn update(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]);
}

/// The MSI an unmasked redirection entry sends.
pub fn entry_msi(rte: u64) -> Option<MsiMessage> {
    if rte & RTE_MASKED != 0 {
        return None;
    }
    let vector = (rte & 0xff) as u32;
    let delivery_mode = ((rte >> 8) & 0x7) as u32;
    let logical = ((rte >> 11) & 1) as u32;
    let level = rte & RTE_LEVEL != 0;
    let dest = ((rte >> 56) & 0xff) as u32 | (((rte >> 49) & 0x7f) as u32) << 8;
    Some(MsiMessage {
        address_lo: 0xfee0_0000 | (dest & 0xff) << 12 | logical << 2,
        address_hi: dest & !0xff,
        // Level-triggered MSIs are sent asserted (bit 14).
        data: vector | delivery_mode << 8 | u32::from(level) << 15 | u32::from(level) << 14,
    })
}

struct State {
    ioregsel: u32,
    id: u32,
    redirtbl: [u64; IOAPIC_PINS],
}

pub struct Ioapic {
    state: Mutex<State>,
    routes: Arc<dyn MsiRoutes>,
}

impl Ioapic {
    /// Every pin masked, as at reset; KVM gets the (empty) routes at once.
    pub fn new(routes: Arc<dyn MsiRoutes>) -> Self {
        let io =
            Ioapic { state: Mutex::new(State { ioregsel: 0, id: 0, redirtbl: [RTE_MASKED; IOAPIC_PINS] }), routes };
        io.publish(&io.state.lock().unwrap_or_else(|e| e.into_inner()));
        io
    }

    fn publish(&self, s: &State) {
        let routes = std::array::from_fn(|pin| entry_msi(s.redirtbl[pin]));
        self.routes.update(&routes);
    }

    /// The guest ended a level-triggered interrupt with `vector`
    /// (`KVM_EXIT_IOAPIC_EOI`): the pins on that vector may fire again.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for rte in s.redirtbl.iter_mut().filter(|r| (**r & 0xff) as u8 == vector) {
            *rte &= !RTE_REMOTE_IRR;
        }
    }

    /// The redirection table, for tests and diagnostics.
    pub fn entries(&self) -> [u64; IOAPIC_PINS] {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).redirtbl
    }

    fn read_register(s: &State) -> u32 {
        match s.ioregsel {
            REG_ID | REG_ARBITRATION => s.id << 24,
            REG_VERSION => VERSION,
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let rte = s.redirtbl[((r - REG_REDIR_BASE) / 2) as usize];
                if r % 2 == 0 {
                    rte as u32
                } else {
                    (rte >> 32) as u32
                }
            }
            r => {
                guest_warn!("ioapic: guest read unknown register {r:#x}, returning 0");
                0
            }
        }
    }

    /// Writes the selected register; returns whether a route changed.
    fn write_register(s: &mut State, value: u32) -> bool {
        match s.ioregsel {
            REG_ID => {
                s.id = (value >> 24) & 0xf;
                false
            }
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDIR_BASE) / 2) as usize;
                let old = s.redirtbl[pin];
                let (shift, half) = if r % 2 == 0 { (0, 0xffff_ffffu64) } else { (32, 0xffff_ffff << 32) };
                let written = (old & !half) | (u64::from(value) << shift);
                let new = (old & !RTE_WRITABLE) | (written & RTE_WRITABLE);
                s.redirtbl[pin] = new;
                debug!("ioapic: pin {pin} entry {old:#x} -> {new:#x}");
                entry_msi(old) != entry_msi(new)
            }
            r => {
                guest_warn!("ioapic: guest wrote {value:#x} to read-only or unknown register {r:#x}, ignored");
                false
            }
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            guest_warn!("ioapic: ignoring {}-byte read at offset {offset:#x}", data.len());
            return;
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let value = match offset {
            IOREGSEL => s.ioregsel,
            IOWIN => Self::read_register(&s),
            _ => {
                guest_warn!("ioapic: ignoring read at offset {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!("ioapic: ignoring {}-byte write at offset {offset:#x}", data.len());
            return;
        };
        let value = u32::from_le_bytes(bytes);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match offset {
            IOREGSEL => s.ioregsel = value & 0xff,
            IOWIN => {
                if Self::write_register(&mut s, value) {
                    // Under the lock: two vCPUs rewriting entries publish in order.
                    self.publish(&s);
                }
            }
            _ => guest_warn!("ioapic: ignoring write of {value:#x} at offset {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Routes(Mutex<Vec<[Option<MsiMessage>; IOAPIC_PINS]>>);
    impl MsiRoutes for Routes {
        fn update(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) {
            self.0.lock().unwrap().push(*routes);
        }
    }

    fn setup() -> (Arc<Routes>, Ioapic) {
        let r = Arc::new(Routes::default());
        (r.clone(), Ioapic::new(r))
    }
    fn sel(io: &Ioapic, reg: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
    }
    fn wr(io: &Ioapic, reg: u32, v: u32) {
        sel(io, reg);
        io.write(IOWIN, &v.to_le_bytes());
    }
    fn rd(io: &Ioapic, reg: u32) -> u32 {
        sel(io, reg);
        let mut b = [0; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn version_id_and_reset_state() {
        let (routes, io) = setup();
        assert_eq!(rd(&io, REG_VERSION), 0x0017_0011);
        wr(&io, REG_ID, 0x0f00_0000 | 0x1234);
        assert_eq!(rd(&io, REG_ID), 0x0f00_0000);
        assert_eq!(rd(&io, 0x10), RTE_MASKED as u32, "masked at reset");
        assert_eq!(routes.0.lock().unwrap().as_slice(), &[[None; IOAPIC_PINS]]);
    }

    #[test]
    fn an_unmasked_entry_becomes_its_msi_and_masking_takes_it_back() {
        let (routes, io) = setup();
        // Pin 4 to APIC id 3, vector 0x24, fixed, physical, edge: high half first, as Linux does.
        wr(&io, 0x10 + 2 * 4 + 1, 3 << 24);
        wr(&io, 0x10 + 2 * 4, 0x24);
        let last = *routes.0.lock().unwrap().last().unwrap();
        assert_eq!(last[4], Some(MsiMessage { address_lo: 0xfee0_3000, address_hi: 0, data: 0x24 }));
        assert!(last.iter().enumerate().all(|(p, r)| p == 4 || r.is_none()));
        wr(&io, 0x10 + 2 * 4, 0x24 | RTE_MASKED as u32);
        assert_eq!(routes.0.lock().unwrap().last().unwrap()[4], None);
    }

    #[test]
    fn extended_destination_bits_reach_apic_ids_past_255() {
        // APIC id 287 = 0x11f: bits 0..=7 in 56..=63, bits 8..=14 in 49..=55.
        let rte = 0x1fu64 << 56 | 1 << 49 | 0x30;
        let msi = entry_msi(rte).unwrap();
        assert_eq!(msi, MsiMessage { address_lo: 0xfee1_f000, address_hi: 0x100, data: 0x30 });
        assert_eq!(msi.address_hi & 0xff, 0, "KVM refuses x2APIC-format routes with low address_hi bits");
        let (routes, io) = setup();
        wr(&io, 0x10 + 2 * 5 + 1, (rte >> 32) as u32);
        wr(&io, 0x10 + 2 * 5, rte as u32);
        assert_eq!(routes.0.lock().unwrap().last().unwrap()[5], Some(msi));
        assert_eq!(io.entries()[5], rte);
    }

    #[test]
    fn level_entries_and_their_eoi() {
        let rte = RTE_LEVEL | 0x41;
        assert_eq!(entry_msi(rte).unwrap().data, 0x41 | 1 << 15 | 1 << 14);
        let (_, io) = setup();
        io.state.lock().unwrap().redirtbl[2] = rte | RTE_REMOTE_IRR;
        io.end_of_interrupt(0x41);
        assert_eq!(io.entries()[2], rte);
    }

    #[test]
    fn guest_garbage_is_ignored() {
        let (routes, io) = setup();
        let before = routes.0.lock().unwrap().len();
        wr(&io, REG_VERSION, 0);
        wr(&io, 0x10 + 2 * IOAPIC_PINS as u32, 0); // past the table
        assert_eq!(rd(&io, 0x10 + 2 * IOAPIC_PINS as u32), 0);
        io.write(IOWIN, &[1, 2]); // wrong width
        io.write(0x18, &[0; 4]); // no such offset
        let mut b = [0xaa; 8];
        io.read(IOWIN, &mut b);
        assert_eq!(b, [0; 8]);
        // read-only bits of an entry keep their value
        wr(&io, 0x10, !(RTE_MASKED as u32));
        assert_eq!(rd(&io, 0x10) & (RTE_DELIVERY_STATUS | RTE_REMOTE_IRR) as u32, 0);
        assert_eq!(rd(&io, 0x10) >> 17, 0, "reserved bits 17..=31 stay 0");
        assert_eq!(rd(&io, REG_VERSION), VERSION);
        assert_eq!(routes.0.lock().unwrap().len(), before + 1, "only the entry write changed a route");
    }
}
