//! The 8250/16550 UART at COM1 (vm-superio), wired to the host's stdout, a file, or nothing.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::warn;

use crate::guest_warn;
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::interrupt::EventFdTrigger;

/// I/O port base and IRQ of COM1, as the guest's DSDT describes them.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

type Uart = Serial<EventFdTrigger, Arc<UartEvents>, Box<dyn Write + Send>>;

/// What the UART reports through vm-superio's events: whether console output
/// works (only a transmitted byte counts, not a divisor-latch or other
/// register write at the same offset), and when the guest has read all
/// queued input, so the VMM can queue more instead of dropping it.
#[derive(Debug, Default)]
pub struct UartEvents {
    /// Output is failing (a full disk, a closed pipe): logged once when it
    /// starts and once when it recovers, not once per byte.
    failing: AtomicBool,
    /// Output bytes lost to such failures.
    lost: AtomicU64,
    /// Written when the guest empties the input FIFO.
    input_room: Option<EventFd>,
    /// Input bytes handed to the UART, and read from it by the guest.
    input_queued: AtomicU64,
    input_read: AtomicU64,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {
        self.input_read.fetch_add(1, Ordering::Relaxed);
    }

    fn out_byte(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            warn!("serial: output works again ({} bytes were lost)", self.lost.load(Ordering::Relaxed));
        }
    }

    fn tx_lost_byte(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    fn in_buffer_empty(&self) {
        if let Some(room) = &self.input_room {
            if let Err(e) = room.write(1) {
                warn!("serial: cannot signal room for console input: {e}");
            }
        }
    }
}

impl UartEvents {
    /// After a lost byte: true the first time in a row of failures.
    fn newly_failing(&self) -> bool {
        !self.failing.swap(true, Ordering::AcqRel)
    }
}

/// COM1 on the port I/O bus.
pub struct SerialDevice {
    uart: Mutex<Uart>,
    health: Arc<UartEvents>,
}

impl SerialDevice {
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self::build(irq, out, None)
    }

    /// A UART that writes `input_room` whenever the guest has read all the
    /// input queued with [`SerialDevice::enqueue_input`].
    pub fn with_input_room(irq: EventFdTrigger, out: Box<dyn Write + Send>, input_room: EventFd) -> Self {
        Self::build(irq, out, Some(input_room))
    }

    fn build(irq: EventFdTrigger, out: Box<dyn Write + Send>, input_room: Option<EventFd>) -> Self {
        let health = Arc::new(UartEvents { input_room, ..UartEvents::default() });
        SerialDevice { uart: Mutex::new(Serial::with_events(irq, health.clone(), out)), health }
    }

    /// Bytes of guest output lost so far.
    pub fn lost_bytes(&self) -> u64 {
        self.health.lost.load(Ordering::Relaxed)
    }

    /// Whether output is failing now.
    pub fn output_failing(&self) -> bool {
        self.health.failing.load(Ordering::Relaxed)
    }

    /// Name and value of each counter, for `vm.counters`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lost_bytes", self.lost_bytes()),
            ("output_failing", u64::from(self.output_failing())),
            ("input_queued_bytes", self.health.input_queued.load(Ordering::Relaxed)),
            ("input_read_bytes", self.health.input_read.load(Ordering::Relaxed)),
        ]
    }

    /// Queues host input (stdin) for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        let room = uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return Ok(0);
        }
        let taken =
            uart.enqueue_raw_bytes(&bytes[..room]).map_err(|e| io::Error::other(format!("serial input: {e:?}")))?;
        self.health.input_queued.fetch_add(taken as u64, Ordering::Relaxed);
        Ok(taken)
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            guest_warn!("serial: ignoring {}-byte read at offset {offset}", data.len());
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.lock().unwrap_or_else(|e| e.into_inner()).read(offset as u8);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            guest_warn!("serial: ignoring {}-byte write at offset {offset}", data.len());
            return;
        }
        // vm-superio writes and flushes each transmitted byte itself.
        let r = self.uart.lock().unwrap_or_else(|e| e.into_inner()).write(offset as u8, data[0]);
        match r {
            Ok(()) => {}
            Err(vm_superio::serial::Error::IOError(e)) => {
                if self.health.newly_failing() {
                    warn!("serial: output failing ({e}); the guest runs on, its console output is dropped until a write succeeds");
                }
            }
            Err(e) => guest_warn!("serial: register write at offset {offset} failed: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that fails while `full` is set, like a full disk.
    #[derive(Clone, Default)]
    struct Flaky(Arc<std::sync::atomic::AtomicBool>);
    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0.load(Ordering::Relaxed) {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(b.len())
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_output_is_counted_and_the_device_keeps_working() {
        let out = Flaky::default();
        out.0.store(true, Ordering::Relaxed);
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let dev = SerialDevice::new(irq, Box::new(out.clone()));
        for _ in 0..1000 {
            dev.write(0, b"x");
        }
        assert_eq!(dev.lost_bytes(), 1000);
        assert!(dev.output_failing());
        // Register writes, the divisor latch's at offset 0 included, are not output.
        dev.write(3, &[0x80]);
        dev.write(0, &[1]);
        dev.write(3, &[0x03]);
        assert!(dev.output_failing(), "still failing: no byte went out");
        out.0.store(false, Ordering::Relaxed);
        dev.write(0, b"y");
        assert!(!dev.output_failing(), "recovers on the first good write");
        assert_eq!(dev.lost_bytes(), 1000);
    }

    #[test]
    fn output_input_and_garbage() {
        let out = Shared::default();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let dev = SerialDevice::new(irq.clone(), Box::new(out.clone()));
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        // wrong sizes and offsets are ignored
        dev.write(0, b"xy");
        dev.write(9, b"z");
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        // enable the receive interrupt, then input arrives in the FIFO
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"ok").unwrap(), 2);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(&b, b"o");
        assert!(irq.event_fd().read().unwrap() >= 1);
    }

    #[test]
    fn reading_the_last_queued_byte_signals_room_for_more_input() {
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let room = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::with_input_room(irq, Box::new(Shared::default()), room.try_clone().unwrap());
        assert_eq!(dev.enqueue_input(b"ab").unwrap(), 2);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert!(room.read().is_err(), "one byte still queued: no signal yet");
        dev.read(0, &mut b);
        assert_eq!(room.read().unwrap(), 1, "the FIFO is empty: room signalled");
    }
}
