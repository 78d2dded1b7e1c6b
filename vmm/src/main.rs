//! `lithe`: boot a VM from the command line or over the API, or drive a
//! running one with `lithe remote`.

#[cfg(not(loom))]
use std::process::ExitCode;
#[cfg(not(loom))]
use std::sync::{Arc, Mutex};
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use clap::Parser;
#[cfg(not(loom))]
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
#[cfg(not(loom))]
use log::error;

#[cfg(not(loom))]
use vmm::api_bridge::{ApiBridge, VmmShared};
#[cfg(not(loom))]
use vmm::cli::{Cli, Command, RemoteAction, RemoteArgs};
#[cfg(not(loom))]
use vmm::vmm::Vmm;

/// A loom build only models the vCPU table; there is no VMM to run.
#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Remote(args)) => remote(args),
        None => run(cli),
    }
}

#[cfg(not(loom))]
fn run(cli: Cli) -> ExitCode {
    env_logger::Builder::new().filter_level(cli.vm.log_level).format_target(false).init();
    let config = match cli.vm.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lithe: {e}");
            return ExitCode::from(2);
        }
    };
    if config.is_none() && cli.vm.api_socket.is_none() {
        eprintln!("lithe: give --kernel to boot a VM, or --api-socket to configure one over the API");
        return ExitCode::from(2);
    }
    if let Some(c) = &config {
        let max = kvm_ioctls::Kvm::new().map(|k| k.get_max_vcpus() as u32).unwrap_or(u32::MAX);
        if let Err(e) = c.validate(max) {
            eprintln!("lithe: {e}");
            return ExitCode::from(2);
        }
    }

    let shared = Arc::new(VmmShared::default());
    let mut server = None;
    let mut api = None;
    if let Some(path) = &cli.vm.api_socket {
        let (bridge, rx) = match ApiBridge::new(shared.clone()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("lithe: API: {e}");
                return ExitCode::from(1);
            }
        };
        let wake = match bridge.wake_fd() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("lithe: API: {e}");
                return ExitCode::from(1);
            }
        };
        match api::ApiServer::start(path, Arc::new(bridge)) {
            Ok(s) => server = Some(s),
            Err(e) => {
                eprintln!("lithe: {e}");
                return ExitCode::from(1);
            }
        }
        api = Some((rx, wake));
    }

    let mut vmm = match Vmm::new(shared, api) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lithe: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = vmm.handle_termination_signals() {
        eprintln!("lithe: installing signal handlers: {e}");
        return ExitCode::from(1);
    }
    if let Some(c) = config {
        vmm.set_config(c);
        if let Err(e) = vmm.boot() {
            error!("boot failed: {e}");
            eprintln!("lithe: {e}");
            return ExitCode::from(1);
        }
    }
    let vmm = Arc::new(Mutex::new(vmm));
    let mut em = match EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new() {
        Ok(em) => em,
        Err(e) => {
            eprintln!("lithe: event manager: {e:?}");
            return ExitCode::from(1);
        }
    };
    em.add_subscriber(vmm.clone());
    let code = loop {
        if let Err(e) = em.run() {
            error!("event loop: {e:?}");
            break 1;
        }
        if let Some(code) = vmm.lock().unwrap_or_else(|e| e.into_inner()).exit_code() {
            break code;
        }
    };
    drop(em);
    drop(vmm);
    drop(server);
    ExitCode::from(code as u8)
}

#[cfg(not(loom))]
fn remote(args: RemoteArgs) -> ExitCode {
    use serde_json::json;
    let (method, endpoint, body, timeout) = match &args.action {
        RemoteAction::Ping => ("GET", "vmm.ping", None, 10),
        RemoteAction::Info => ("GET", "vm.info", None, 10),
        RemoteAction::Resize { cpus, wait, wait_ms } => {
            let wait = wait_ms.or(wait.then_some(api::types::DEFAULT_RESIZE_WAIT_MS));
            let mut b = json!({ "desired_vcpus": cpus });
            if let Some(w) = wait {
                b["wait_ms"] = json!(w);
            }
            ("PUT", "vm.resize", Some(b), wait.unwrap_or(0) / 1000 + 70)
        }
        RemoteAction::Create { config } => {
            let text = match std::fs::read_to_string(config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("lithe: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            match serde_json::from_str(&text) {
                Ok(v) => ("PUT", "vm.create", Some(v), 70),
                Err(e) => {
                    eprintln!("lithe: {}: not JSON: {e}", config.display());
                    return ExitCode::from(2);
                }
            }
        }
        RemoteAction::Boot => ("PUT", "vm.boot", None, 70),
        RemoteAction::Pause => ("PUT", "vm.pause", None, 70),
        RemoteAction::Resume => ("PUT", "vm.resume", None, 70),
        RemoteAction::Reboot => ("PUT", "vm.reboot", None, 70),
        RemoteAction::Shutdown => ("PUT", "vm.shutdown", None, 70),
        RemoteAction::VmmShutdown => ("PUT", "vmm.shutdown", None, 70),
    };
    match api::client::request(&args.api_socket, method, endpoint, body.as_ref(), Duration::from_secs(timeout)) {
        Ok(r) => {
            if !r.body.is_null() {
                println!("{}", serde_json::to_string_pretty(&r.body).unwrap_or_default());
            }
            if (200..300).contains(&r.status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("lithe: {endpoint}: HTTP {}", r.status);
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lithe: {e}");
            ExitCode::from(1)
        }
    }
}
