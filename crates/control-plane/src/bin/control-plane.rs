//! `control-plane`: the reference control plane agents connect to.
//!
//! Thin on purpose: parse the command line, start tracing, load the config
//! (exit 64 on a bad one), bind, and hand over to
//! [`connectivity_control_plane::run`]. SIGTERM and SIGINT start a
//! graceful stop; a second signal exits at once.

use anyhow::Context;
use clap::{Parser, Subcommand};
use connectivity_common::memory;
use connectivity_control_plane::{ControlPlaneConfig, auth, config::EX_USAGE};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Reference control plane for connectivity agents"
)]
struct Cli {
    /// Path of the TOML configuration (see docs/CONTROL_PLANE.md).
    #[arg(
        long,
        short,
        default_value = "control-plane.toml",
        env = "CONTROL_PLANE_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Read a password (or token, or client secret) from stdin and print its
    /// argon2id hash for the config file.
    HashPassword,
    /// Check the configuration and exit (0 when valid, 64 when not).
    CheckConfig,
    /// Make a working setup in DIR: a CA, a server certificate for the
    /// given hosts, an agent group, an agent credential, a console token, a
    /// control-plane.toml, and the first agent's InstallerProfile.cfg.
    Init(InitArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// Directory to create the files in (created, mode 0700; existing files
    /// are never overwritten).
    dir: PathBuf,
    /// A DNS name or IP address agents use to reach the control plane;
    /// repeat for more. The first goes into oic_URL. Default: localhost and
    /// 127.0.0.1.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Address and port to listen on.
    #[arg(long, default_value = connectivity_control_plane::config::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// The agent group to create.
    #[arg(long, default_value = "PRIVATE_GROUP")]
    group: String,
    /// The first agent's user name (oic_USER).
    #[arg(long, default_value = "agent")]
    agent_user: String,
    /// Days the server certificate is valid.
    #[arg(long, default_value_t = connectivity_control_plane::pki::DEFAULT_SERVER_DAYS)]
    days: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    connectivity_common::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::HashPassword) => hash_password(),
        Some(Command::CheckConfig) => check_config(&cli.config),
        Some(Command::Init(args)) => init(args),
        None => serve(&cli.config),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match ControlPlaneConfig::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => bad_config(&e),
    }
}

fn init(args: InitArgs) -> ExitCode {
    use connectivity_control_plane::init::{self, InitError, InitOptions};
    let hosts = if args.hosts.is_empty() {
        init::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect()
    } else {
        args.hosts
    };
    let options = InitOptions {
        dir: args.dir,
        hosts,
        listen: args.listen,
        group: args.group,
        agent_user: args.agent_user,
        server_days: args.days,
    };
    match init::init(&options) {
        Ok(done) => {
            print!("{}", init::summary(&done));
            ExitCode::SUCCESS
        }
        Err(InitError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE as u8)
        }
        Err(InitError::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_config(e: &connectivity_control_plane::ConfigError) -> ExitCode {
    eprintln!("error: invalid configuration: {e}");
    ExitCode::from(EX_USAGE as u8)
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match ControlPlaneConfig::load(path) {
        Ok(c) => c,
        Err(e) => return bad_config(&e),
    };
    // Batch frames reuse freed memory instead of faulting in fresh pages
    // (connectivity_common::memory says why only the control plane does).
    if !memory::keep_freed_pages() {
        tracing::debug!("the C library has no allocator thresholds to set");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async_main(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<connectivity_control_plane::ConfigError>() {
            // A config job that clashes with the job store is found only at start.
            Some(config_error) => bad_config(config_error),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn async_main(config: ControlPlaneConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen in {})",
                config.listen,
                config.path.display()
            )
        })?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    tokio::spawn(memory::trim_periodically(memory::CONTROL_PLANE_TRIM_EVERY));
    connectivity_control_plane::run(config, listener, shutdown).await
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit now.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        for round in 0..2 {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if round == 0 {
                tracing::info!(
                    signal = name,
                    "stopping gracefully; send it again to stop at once"
                );
                shutdown.cancel();
            } else {
                tracing::warn!(signal = name, "stopping at once");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (input is shown): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        eprintln!(
            "error: empty password; pipe it in, e.g. printf '%s' \"$PASSWORD\" | control-plane hash-password"
        );
        return ExitCode::from(EX_USAGE as u8);
    }
    match auth::hash_password(password.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
