//! How the guest turns itself off or resets: the ACPI hardware-reduced sleep
//! control and reset registers (what the FADT points at), and the i8042
//! keyboard controller's reset line (`reboot=k`).

use std::sync::Arc;

use log::info;

use crate::guest_warn;

use crate::bus::BusDevice;

/// I/O ports of the ACPI power block: sleep control, sleep status, reset.
pub const ACPI_POWER_PORT: u16 = 0x600;
pub const ACPI_POWER_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
/// The value the guest writes to the reset register (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x1;
/// The sleep type the DSDT's `_S5` names.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// i8042 ports: data and command/status, mapped as one range so the device
/// knows which port a byte went to.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_LEN: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT + 1) as u64;
const I8042_COMMAND_OFFSET: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64;
const I8042_CMD_RESET_CPU: u8 = 0xfe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// The guest powered off (ACPI S5).
    Shutdown,
    /// The guest asked for a reset.
    Reboot,
}

pub type PowerHandler = Arc<dyn Fn(PowerEvent) + Send + Sync>;

/// The ACPI sleep control/status and reset registers.
pub struct AcpiPowerDevice {
    handler: PowerHandler,
}

impl AcpiPowerDevice {
    pub fn new(handler: PowerHandler) -> Self {
        AcpiPowerDevice { handler }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never asleep; other registers read as zero.
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let [value] = data else {
            guest_warn!("acpi-power: ignoring {}-byte write at offset {offset}", data.len());
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    info!("guest requested ACPI S5 (power off)");
                    (self.handler)(PowerEvent::Shutdown);
                } else if value & SLP_EN != 0 {
                    guest_warn!("acpi-power: guest asked for unsupported sleep type {sleep_type}, ignored");
                }
            }
            RESET_OFFSET if *value == RESET_VALUE => {
                info!("guest requested reset through the ACPI reset register");
                (self.handler)(PowerEvent::Reboot);
            }
            _ => guest_warn!("acpi-power: ignoring write of {value:#x} at offset {offset}"),
        }
    }
}

/// Just enough of an i8042 for Linux's probe and `reboot=k`.
pub struct I8042Device {
    handler: PowerHandler,
}

impl I8042Device {
    pub fn new(handler: PowerHandler) -> Self {
        I8042Device { handler }
    }
}

impl BusDevice for I8042Device {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // Only the command port resets; 0xFE on the data port is a byte for
        // the keyboard. (Found by the hostile-guest test: random bytes to 0x60
        // reset the guest.)
        if offset == I8042_COMMAND_OFFSET && data == [I8042_CMD_RESET_CPU] {
            info!("guest requested reset through the i8042");
            (self.handler)(PowerEvent::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (Arc<Mutex<Vec<PowerEvent>>>, PowerHandler) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Arc::new(move |e| s.lock().unwrap().push(e)))
    }

    #[test]
    fn s5_and_reset_are_reported() {
        let (seen, h) = recorder();
        let dev = AcpiPowerDevice::new(h);
        dev.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | (1 << 5)]);
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(seen.lock().unwrap().as_slice(), &[PowerEvent::Shutdown, PowerEvent::Reboot]);
    }

    #[test]
    fn other_writes_do_nothing() {
        let (seen, h) = recorder();
        let dev = AcpiPowerDevice::new(h);
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | (1 << 5)]); // S3
        dev.write(RESET_OFFSET, &[7]);
        dev.write(RESET_OFFSET, &[1, 0]);
        dev.write(SLEEP_STATUS_OFFSET, &[0xff]);
        let i8042 = I8042Device::new(seen_handler(&seen));
        i8042.write(I8042_COMMAND_OFFSET, &[0xaa]);
        i8042.write(0, &[0xfe]); // the data port: a keyboard byte, not a reset
        i8042.write(1, &[0xfe]);
        assert!(seen.lock().unwrap().is_empty());
        i8042.write(I8042_COMMAND_OFFSET, &[0xfe]);
        assert_eq!(seen.lock().unwrap().as_slice(), &[PowerEvent::Reboot]);
    }

    fn seen_handler(seen: &Arc<Mutex<Vec<PowerEvent>>>) -> PowerHandler {
        let s = seen.clone();
        Arc::new(move |e| s.lock().unwrap().push(e))
    }
}
