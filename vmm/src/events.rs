//! The event monitor (`--event-monitor path=P|fd=N`): Cloud Hypervisor's
//! JSON event records, one pretty-printed object followed by a blank line,
//! plus lithe's hotplug lifecycle per vCPU so an orchestrator can follow a
//! resize without polling (QEMU's `ACPI_DEVICE_OST` and `DEVICE_DELETED` are
//! the anchor):
//!
//! | source        | event                 | properties                      |
//! |---------------|-----------------------|---------------------------------|
//! | `vmm`         | `starting`, `shutdown`|                                 |
//! | `vm`          | `booting`, `booted`, `pausing`, `paused`, `resuming`, `resumed`, `rebooting`, `rebooted`, `shutdown`, `deleted`, `resizing`, `power-button` | |
//! | `vcpu`        | `added`, `acknowledged`, `running`, `eject-requested`, `ejected`, `parked`, `stuck`, `rolled-back` | `id`, `from`, `to`, `reason` |
//! | `cpu-hotplug` | `ost`                 | `id`, `event`, `status`         |
//!
//! Records are written by a thread of their own, so a slow reader never
//! holds up a vCPU or the main loop; without a monitor, emitting is one
//! atomic load.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::Serialize;

use crate::seccomp::Filter;
use vcpu_table::lifecycle::{Phase, Reason, State};

struct Monitor {
    tx: Sender<String>,
    start: Instant,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

#[derive(Serialize)]
struct Record<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<&'a BTreeMap<&'a str, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("--event-monitor: expected path=PATH or fd=N, got {0:?}")]
    Syntax(String),
    #[error("--event-monitor: {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("--event-monitor: fd {0} is not open")]
    BadFd(i32),
    #[error("--event-monitor: starting its thread: {0}")]
    Thread(std::io::Error),
    #[error("--event-monitor: already started")]
    AlreadyStarted,
}

/// Opens what `--event-monitor` names: `path=P` (created, truncated) or
/// `fd=N` (an inherited descriptor, taken over).
pub fn open(spec: &str) -> Result<File, MonitorError> {
    if let Some(path) = spec.strip_prefix("path=").filter(|p| !p.is_empty()) {
        return std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| MonitorError::Open { path: path.into(), source });
    }
    let Some(fd) = spec.strip_prefix("fd=").and_then(|n| n.parse::<i32>().ok()).filter(|&n| n >= 0) else {
        return Err(MonitorError::Syntax(spec.into()));
    };
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(MonitorError::BadFd(fd));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to lithe
    // for this purpose by its parent: from here on this File owns it.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Starts writing events to `file` on a thread of its own, confined by
/// `seccomp` when given.
pub fn start(mut file: File, seccomp: Option<Arc<Filter>>) -> Result<(), MonitorError> {
    let (tx, rx) = channel::<String>();
    MONITOR.set(Monitor { tx, start: Instant::now() }).map_err(|_| MonitorError::AlreadyStarted)?;
    std::thread::Builder::new()
        .name("event-monitor".into())
        .spawn(move || {
            if let Some(f) = seccomp {
                if let Err(e) = f.apply() {
                    warn!("event monitor: {e}; no events will be written");
                    return;
                }
            }
            let mut failed = false;
            while let Ok(record) = rx.recv() {
                let written = file.write_all(record.as_bytes()).and_then(|_| file.write_all(b"\n\n"));
                if let Err(e) = written {
                    // Once: a full disk or a gone reader must not flood the log.
                    if !failed {
                        warn!("event monitor: writing failed ({e}); later events are dropped until a write succeeds");
                    }
                    failed = true;
                } else {
                    failed = false;
                }
            }
        })
        .map_err(MonitorError::Thread)?;
    Ok(())
}

/// Emits one event (and logs it).
pub fn emit(source: &str, event: &str, properties: &[(&str, String)]) {
    let Some(m) = MONITOR.get() else { return };
    let props: BTreeMap<&str, String> = properties.iter().cloned().collect();
    let record =
        Record { timestamp: m.start.elapsed(), source, event, properties: (!props.is_empty()).then_some(&props) };
    if let Ok(text) = serde_json::to_string_pretty(&record) {
        info!("event: {source} {event} {props:?}");
        let _ = m.tx.send(text);
    }
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{p:?}"))
}

fn reason_name(r: Reason) -> String {
    serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{r:?}"))
}

/// The event a vCPU's transition is, if it is one an orchestrator follows.
pub fn transition_event(from: State, to: State) -> Option<&'static str> {
    if to.reason != Reason::None && to.reason != from.reason {
        return Some("rolled-back");
    }
    Some(match to.phase {
        Phase::Adding if from.phase != Phase::Removing => "added",
        Phase::Acknowledged => "acknowledged",
        Phase::Running if from.phase != Phase::Removing => "running",
        Phase::Removing => "eject-requested",
        Phase::Ejected => "ejected",
        Phase::Parked => "parked",
        Phase::Stuck => "stuck",
        // A removal taken back before the guest saw it.
        Phase::Adding | Phase::Running => "eject-withdrawn",
        Phase::Absent => return None,
    })
}

/// Called by the lifecycle on every transition of vCPU `id`.
pub fn vcpu_transition(id: u32, from: State, to: State) {
    if MONITOR.get().is_none() {
        return;
    }
    if let Some(event) = transition_event(from, to) {
        emit(
            "vcpu",
            event,
            &[
                ("id", id.to_string()),
                ("from", phase_name(from.phase)),
                ("to", phase_name(to.phase)),
                ("reason", reason_name(to.reason)),
            ],
        );
    }
}

/// The guest's `_OST(event, status)` for vCPU `id`.
pub fn ost(id: u32, event: u32, status: u32) {
    if MONITOR.get().is_none() {
        return;
    }
    emit(
        "cpu-hotplug",
        "ost",
        &[("id", id.to_string()), ("event", format!("{event:#x}")), ("status", format!("{status:#x}"))],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_name_the_lifecycle_steps() {
        let s = State::new;
        assert_eq!(transition_event(s(Phase::Absent), s(Phase::Adding)), Some("added"));
        assert_eq!(transition_event(s(Phase::Adding), s(Phase::Acknowledged)), Some("acknowledged"));
        assert_eq!(transition_event(s(Phase::Acknowledged), s(Phase::Running)), Some("running"));
        assert_eq!(transition_event(s(Phase::Running), s(Phase::Removing)), Some("eject-requested"));
        assert_eq!(transition_event(s(Phase::Removing), s(Phase::Ejected)), Some("ejected"));
        assert_eq!(transition_event(s(Phase::Ejected), s(Phase::Parked)), Some("parked"));
        let refused = State { phase: Phase::Running, from: Phase::Absent, reason: Reason::EjectRefused };
        assert_eq!(transition_event(s(Phase::Removing), refused), Some("rolled-back"));
        assert_eq!(transition_event(s(Phase::Removing), s(Phase::Running)), Some("eject-withdrawn"));
    }

    #[test]
    fn open_takes_path_or_fd_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.json");
        assert!(open(&format!("path={}", p.display())).is_ok());
        assert!(p.exists());
        assert!(matches!(open("path="), Err(MonitorError::Syntax(_))));
        assert!(matches!(open("fd=x"), Err(MonitorError::Syntax(_))));
        assert!(matches!(open("fd=987654"), Err(MonitorError::BadFd(987654))));
        assert!(matches!(open("/tmp/x"), Err(MonitorError::Syntax(_))));
    }

    #[test]
    fn records_have_cloud_hypervisors_shape() {
        let props: BTreeMap<&str, String> = [("id", "2".to_string())].into();
        let r =
            Record { timestamp: Duration::from_millis(1500), source: "vcpu", event: "added", properties: Some(&props) };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"timestamp": {"secs": 1, "nanos": 500000000}, "source": "vcpu", "event": "added", "properties": {"id": "2"}})
        );
    }
}
