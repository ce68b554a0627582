//! `connectivity-agent`: parse the command line, start logging, load the
//! profile, and hand over to the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use connectivity_agent::agent::{self, AgentError, EX_CONFIG};
use connectivity_agent::config::{AgentConfig, ConfigError, EX_USAGE};
use connectivity_protocol::command::EX_RESTART;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

const DEFAULT_PROFILE: &str = "/etc/connectivity-agent/InstallerProfile.cfg";

#[derive(Parser)]
#[command(
    version,
    about = "Relays private Kafka-compatible streams to a cloud control plane over one outbound connection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (what the systemd unit starts).
    Run {
        #[arg(long, default_value = DEFAULT_PROFILE)]
        config: PathBuf,
    },
    /// Validate the profile, then try every step to the control plane.
    Check {
        #[arg(long, default_value = DEFAULT_PROFILE)]
        config: PathBuf,
    },
    /// Install the agent as a systemd service (run as root).
    Install(connectivity_agent::install::InstallArgs),
    /// Remove the service (keeps state unless --purge).
    Uninstall(connectivity_agent::install::UninstallArgs),
    /// Show the whole flow with nothing installed: in-process Kafka, control
    /// plane, agent and a producer of Kafka Connect rows.
    Demo(connectivity_agent::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    connectivity_common::tls::install_default_provider();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Install(args) => glue(connectivity_agent::install::install(&args)),
        Command::Uninstall(args) => glue(connectivity_agent::install::uninstall(&args)),
        Command::Demo(args) => {
            connectivity_agent::logging::init("warn");
            runtime().block_on(async {
                glue(connectivity_agent::demo::run(args, shutdown_on_signal()).await)
            })
        }
    }
}

fn glue(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {ce}");
                return ExitCode::from(EX_USAGE as u8);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<AgentConfig, ExitCode> {
    connectivity_agent::credentials::load_agent_config(path, &|k| std::env::var(k).ok()).map_err(
        |e| {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE as u8)
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread: librdkafka has its own threads, and the relay's work
    // (copy into a batch, encrypt, write) gains nothing from hopping
    // between workers; measured 17% less CPU per record and 17% more
    // throughput than a multi-threaded runtime (docs/PERFORMANCE.md).
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    connectivity_agent::logging::init(&config.log_level);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    runtime().block_on(async move {
        let shutdown = shutdown_on_signal();
        let result = connectivity_agent::agent::runner::run_agent(config, shutdown).await;
        match result {
            Ok(agent::Stopped::Shutdown) => {
                tracing::info!("agent stopped");
                ExitCode::SUCCESS
            }
            Ok(agent::Stopped::RestartRequested) => {
                tracing::info!(code = EX_RESTART, "agent stopped for a restart");
                ExitCode::from(EX_RESTART as u8)
            }
            Err(AgentError::Refused(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::from(EX_CONFIG as u8)
            }
            Err(AgentError::Setup(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("ok   config {} is valid", path.display());
    for w in &config.warnings {
        println!("warn config {w}");
    }
    let results = runtime().block_on(agent::check::check(&config));
    print!("{}", agent::check::render(&results));
    if results.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A token cancelled by SIGTERM (systemd's stop) or SIGINT (Ctrl-C). A second
/// signal ends the process at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stop requested; draining (send the signal again to stop at once)");
        t.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second stop signal: exiting without draining");
        std::process::exit(130);
    });
    token
}
