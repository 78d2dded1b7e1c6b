//! The 8250/16550 UART at COM1 (vm-superio), wired to the host's stdout, a file, or nothing.

use std::io::{self, Write};
use std::sync::Mutex;

use log::warn;
use vm_superio::Serial;

use crate::bus::BusDevice;
use crate::interrupt::EventFdTrigger;

/// I/O port base and IRQ of COM1, as the guest's DSDT describes them.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

type Uart = Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// COM1 on the port I/O bus.
pub struct SerialDevice {
    uart: Mutex<Uart>,
}

impl SerialDevice {
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice { uart: Mutex::new(Serial::new(irq, out)) }
    }

    /// Queues host input (stdin) for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        let room = uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return Ok(0);
        }
        uart.enqueue_raw_bytes(&bytes[..room]).map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            warn!("serial: ignoring {}-byte read at offset {offset}", data.len());
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.lock().unwrap_or_else(|e| e.into_inner()).read(offset as u8);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            warn!("serial: ignoring {}-byte write at offset {offset}", data.len());
            return;
        }
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = uart.write(offset as u8, data[0]) {
            warn!("serial: write failed: {e:?}");
        }
        if offset == 0 {
            // Console output should show up promptly even when stdout is a pipe.
            let _ = uart.writer_mut().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
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
}
