//! `lithe`: boot a VM from the command line or over the API, or drive a
//! running one with `lithe remote`.

mod cli;

fn main() -> std::process::ExitCode {
    app::main()
}

mod app {
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use clap::Parser;
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use log::{error, warn};

    use crate::cli::{Cli, Command, RemoteAction, RemoteArgs, SeccompMode};
    use vmm::api_bridge::{ApiBridge, VmmShared};
    use vmm::seccomp::Filters;
    use vmm::vmm::Vmm;

    pub fn main() -> ExitCode {
        vmm::counters::mark_process_start();
        let cli = Cli::parse();
        match cli.command {
            Some(Command::Remote(args)) => remote(args),
            None => run(cli),
        }
    }

    fn run(cli: Cli) -> ExitCode {
        let mut logger = env_logger::Builder::new();
        logger.filter_level(cli.vm.log_filter()).format_target(false);
        // virtio-queue logs what it finds wrong in a guest's rings, once per
        // occurrence: lithe's transport and devices say it themselves,
        // rate-limited (devices/src/guest_log.rs), so a guest cannot flood the log.
        logger.filter_module("virtio_queue", log::LevelFilter::Off);
        if let Some(path) = &cli.vm.log_file {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => {
                    logger.target(env_logger::Target::Pipe(Box::new(f)));
                }
                Err(e) => {
                    eprintln!("lithe: --log-file {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        logger.init();
        match serve(&cli) {
            Ok(code) => ExitCode::from(code),
            Err(Failure { code, message }) => {
                eprintln!("lithe: {message}");
                ExitCode::from(code)
            }
        }
    }

    /// Why lithe stops before its main loop: 2 for bad usage, 1 otherwise.
    struct Failure {
        code: u8,
        message: String,
    }

    fn usage(e: impl std::fmt::Display) -> Failure {
        Failure { code: 2, message: e.to_string() }
    }

    /// A bad configuration, naming the flag it came from.
    fn bad_flag(e: vmm::config::ConfigError) -> Failure {
        usage(format!("{}: {e}", e.flag()))
    }

    fn fatal(e: impl std::fmt::Display) -> Failure {
        Failure { code: 1, message: e.to_string() }
    }

    /// Boots the VM (if configured) and runs the main loop; returns the exit code.
    fn serve(cli: &Cli) -> Result<u8, Failure> {
        let config = cli.vm.to_config().map_err(bad_flag)?;
        if config.is_none() && cli.vm.api_socket.is_none() {
            return Err(usage("give --kernel to boot a VM, or --api-socket to configure one over the API"));
        }
        if let Some(c) = &config {
            c.validate(vmm::config::KvmLimits::probe()).map_err(bad_flag)?;
        }
        let monitor = cli.vm.event_monitor.as_deref().map(vmm::events::open).transpose().map_err(usage)?;

        let shared = Arc::new(VmmShared::default());
        let (bridge, api) = match &cli.vm.api_socket {
            Some(_) => {
                let (bridge, rx) = ApiBridge::new(shared.clone()).map_err(|e| fatal(format!("API: {e}")))?;
                let wake = bridge.wake_fd().map_err(|e| fatal(format!("API: {e}")))?;
                (Some(bridge), Some((rx, wake)))
            }
            None => (None, None),
        };
        let seccomp = match cli.vm.seccomp {
            SeccompMode::On => Some(Filters::new().map_err(fatal)?),
            SeccompMode::Log => {
                warn!("seccomp filters only log (--seccomp log): blocked syscalls are reported to the audit log, not stopped");
                Some(Filters::logging().map_err(fatal)?)
            }
            SeccompMode::Off => {
                warn!("seccomp filters are off (--seccomp off): lithe's threads may make any syscall");
                None
            }
        };
        if let Some(file) = monitor {
            vmm::events::start(file, seccomp.as_ref().map(|f| f.monitor.clone())).map_err(fatal)?;
        }
        vmm::events::emit("vmm", "starting", &[]);
        let mut vmm = Vmm::new(shared, api, seccomp.clone()).map_err(fatal)?;
        // Before the socket appears: from then on a SIGTERM must end lithe cleanly.
        vmm.handle_termination_signals().map_err(|e| fatal(format!("installing signal handlers: {e}")))?;
        let server = match (bridge, &cli.vm.api_socket) {
            (Some(bridge), Some(path)) => {
                let init = seccomp
                    .clone()
                    .map(|f| -> api::ThreadInit { Box::new(move || f.api.apply().map_err(|e| e.to_string())) });
                Some(api::ApiServer::start_with(path, Arc::new(bridge), init).map_err(fatal)?)
            }
            _ => None,
        };
        if let Some(c) = config {
            vmm.set_config(c);
            vmm.boot().map_err(|e| {
                error!("boot failed: {e}");
                fatal(e)
            })?;
        }

        // From here on the main thread only runs the loop: filter it too.
        if let Some(f) = &seccomp {
            f.main.apply().map_err(fatal)?;
        }
        let vmm = Arc::new(Mutex::new(vmm));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| fatal(format!("event manager: {e:?}")))?;
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
        // Stop the VM before the socket goes away.
        drop(em);
        drop(vmm);
        drop(server);
        Ok(code as u8)
    }

    fn remote(args: RemoteArgs) -> ExitCode {
        use serde_json::json;
        let (method, endpoint, body, timeout) = match &args.action {
            RemoteAction::Ping => ("GET", "vmm.ping", None, 10),
            RemoteAction::Info => ("GET", "vm.info", None, 10),
            RemoteAction::Resize { cpus, vcpu_ids, wait, wait_ms } => {
                let wait = wait_ms.or(wait.then_some(vmm::resize::DEFAULT_WAIT.as_millis() as u64));
                let mut b = json!({});
                if let Some(n) = cpus {
                    b["desired_vcpus"] = json!(n);
                }
                if let Some(ids) = vcpu_ids {
                    b["desired_vcpu_ids"] = json!(ids);
                }
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
            RemoteAction::Delete => ("PUT", "vm.delete", None, 70),
            RemoteAction::Counters => ("GET", "vm.counters", None, 10),
            RemoteAction::PowerButton => ("PUT", "vm.power-button", None, 70),
        };
        match api::client::call(&args.api_socket, method, endpoint, body.as_ref(), Duration::from_secs(timeout)) {
            Ok(body) => {
                if let Some(b) = body {
                    println!("{}", serde_json::to_string_pretty(&b).unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lithe: {e}");
                ExitCode::from(1)
            }
        }
    }
}
