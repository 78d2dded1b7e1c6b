//! The guest-booting tests, as one test binary: the harness then runs them
//! side by side across what were separate files, instead of one binary (and
//! so one file's tests) at a time. How many guests run at once is
//! `LITHE_TEST_GUESTS` (tests/src/lib.rs).

mod api;
mod boot;
mod ch_remote;
mod cli;
mod devices;
mod faults;
mod fs;
mod hostile_guest;
mod hotplug;
mod memory;
mod net;
mod topology;
mod vsock;
mod x2apic;
