//! The relay benchmark: how close the agent + control plane come to a bare
//! Kafka consumer, on a real broker, with the real agent binary.
//!
//! Run it with `scripts/bench.sh [--short]` (docs/PERFORMANCE.md), which
//! starts a broker, builds the agent and calls `cargo bench --bench relay --
//! ...`. Under `cargo test` (no `--bench` argument) it only runs its own
//! checks of the pure parts, so the harness cannot rot unnoticed.
//!
//! Modules, one job each: [`broker`] (topics, filling, commits), [`ceiling`]
//! (bare rdkafka consumer, kcat), [`system`] (the control plane in this
//! process, with a metered sink), [`cp_process`] (the control plane binary
//! as its own process), [`agent`] (the agent process), [`proxy`]
//! (delay between them), [`paced`] (fixed-rate producer), [`meter`]
//! (counts and latency), [`gc`] (the broker's pauses against the
//! latency tail), [`procstat`] (CPU, memory, machine), [`scenarios`]
//! (the measurements), [`parts`] (the parts of a run, each a series of
//! scenarios), [`report`] and [`svg`] (tables, targets, charts).
#![forbid(unsafe_code)]

mod agent;
mod broker;
mod ceiling;
mod cp_process;
mod floor;
mod gc;
mod meter;
mod mirror;
mod paced;
mod parts;
mod procstat;
mod proxy;
mod receiver;
mod report;
mod scenarios;
mod svg;
mod system;

use anyhow::Context;
use clap::Parser;
use scenarios::Ctx;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Round trip the distance runs add, ms (the target's 50 ms).
const RTT_MS: u64 = 50;

#[derive(Parser, Debug)]
#[command(
    name = "relay",
    about = "Relay benchmark (run it through scripts/bench.sh)"
)]
struct Args {
    /// A few seconds of everything, for CI: proves the harness works, says
    /// nothing about speed.
    #[arg(long)]
    short: bool,
    /// `broker.env` of the broker to use (scripts/kafka-broker.sh writes it).
    #[arg(
        long,
        env = "BENCH_BROKER_ENV",
        default_value = "target/bench/kafka/broker.env"
    )]
    broker_env: PathBuf,
    /// The agent binary to run.
    #[arg(
        long,
        env = "BENCH_AGENT_BIN",
        default_value = "target/release/connectivity-agent"
    )]
    agent_bin: PathBuf,
    /// The control plane binary, run as its own process for one JSONL drain
    /// of the sinks part.
    #[arg(
        long,
        env = "BENCH_CP_BIN",
        default_value = "target/release/control-plane"
    )]
    cp_bin: PathBuf,
    /// Where results, charts, logs and JSONL files go.
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench/results")]
    out: PathBuf,
    /// Run only the parts whose name contains one of these (throughput,
    /// distance, compression, sinks, latency, idle, soak; `relay`: only the
    /// relay to a discard sink, for profiling).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Record sizes of the throughput runs, bytes.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Partition counts of the throughput and latency runs.
    #[arg(long, value_delimiter = ',')]
    partitions: Option<Vec<i32>>,
    /// Multiply the number of records of the throughput runs.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Also drain with the agent's consumer settings but this
    /// `fetch.queue.backoff.ms` (a diagnosis; comma-separated values).
    #[arg(long, value_delimiter = ',')]
    queue_backoff: Vec<u32>,
    /// Diagnosis: the relay jobs' in-flight window (default: the job default).
    #[arg(long)]
    window: Option<u32>,
    /// Diagnosis: the relay jobs' bytes in flight (`window_bytes`).
    #[arg(long)]
    window_bytes: Option<u64>,
    /// Diagnosis: the round trip the distance runs add, ms (the tables
    /// still say 50 ms; a note says what was used).
    #[arg(long, default_value_t = RTT_MS)]
    rtt_ms: u64,
    /// Diagnosis: the relay jobs' `max_wait_ms`.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Diagnosis: the relay jobs' `max_records`.
    #[arg(long)]
    max_records: Option<u32>,
    /// Measure nothing: render report.md and the charts of an earlier
    /// run's results.json (into --out).
    #[arg(long)]
    render: Option<PathBuf>,
    /// Add the relay of another run to the throughput chart:
    /// `LABEL=path/to/results.json` (repeatable).
    #[arg(long)]
    compare: Vec<String>,
    /// Set TCP_NODELAY on the control plane's listening socket (a diagnosis).
    #[arg(long)]
    cp_nodelay: bool,
    /// Length of the memory run, seconds (full run: 600).
    #[arg(long)]
    soak_secs: Option<f64>,
    /// Rates of the latency runs, records/s.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Measured seconds of each latency run.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Build profile the binaries were built with (for the report).
    #[arg(long, env = "BENCH_PROFILE", default_value = "release")]
    profile: String,
    /// The command line to print in the report.
    #[arg(long, env = "BENCH_COMMAND", default_value = "scripts/bench.sh")]
    command: String,
    /// Set by `cargo bench`; without it (under `cargo test`) only the
    /// self-checks run.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What a full or short run measures.
struct Plan {
    sizes: Vec<usize>,
    partitions: Vec<i32>,
    /// Records of each throughput topic, by record size.
    records: fn(usize) -> u64,
    /// Records of each distance topic (the relay over 50 ms is slow), by size.
    distance_records: fn(usize) -> u64,
    distance_partitions: i32,
    /// Runs through the proxy without and with the delay, alternately.
    distance_pairs: usize,
    /// Records of each compression topic on the loopback and over the
    /// limited link (1 KiB records).
    compression_records: (u64, u64),
    compression_partitions: i32,
    /// Runs of each codec (none, lz4, zstd in turn).
    compression_rounds: usize,
    latency_rates: Vec<u64>,
    latency_partitions: Vec<i32>,
    latency_secs: f64,
    settle: Duration,
    idle_secs: f64,
    soak_secs: f64,
    /// Measure the bare consumer again after the relay, to see drift.
    ceiling_twice: bool,
    /// Topics of the sinks part: record sizes, partitions.
    sink_sizes: Vec<usize>,
    sink_partitions: Vec<i32>,
    /// Records of the topic drained into the webhook a record at a time.
    per_record_records: u64,
}

fn plan(args: &Args) -> Plan {
    if args.short {
        Plan {
            sizes: args.sizes.clone().unwrap_or(vec![1024]),
            partitions: args.partitions.clone().unwrap_or(vec![1]),
            records: |_| 20_000,
            distance_records: |_| 5_000,
            distance_partitions: 1,
            distance_pairs: 1,
            compression_records: (5_000, 2_000),
            compression_partitions: 1,
            compression_rounds: 1,
            latency_rates: args.rates.clone().unwrap_or(vec![1000]),
            latency_partitions: args.partitions.clone().unwrap_or(vec![1]),
            latency_secs: args.latency_secs.unwrap_or(1.0),
            settle: Duration::from_millis(200),
            idle_secs: 1.0,
            soak_secs: args.soak_secs.unwrap_or(2.0),
            ceiling_twice: false,
            sink_sizes: args.sizes.clone().unwrap_or(vec![1024]),
            sink_partitions: args.partitions.clone().unwrap_or(vec![1]),
            per_record_records: 2_000,
        }
    } else {
        Plan {
            sizes: args.sizes.clone().unwrap_or(vec![100, 1024, 10240]),
            partitions: args.partitions.clone().unwrap_or(vec![1, 6]),
            // A few seconds for the relay, about a second for the bare
            // consumer (measured twice; the better run counts): long
            // enough that start-up (the first fetch) is a small part.
            records: |size| match size {
                0..=200 => 1_500_000,
                201..=2048 => 1_000_000,
                _ => 100_000,
            },
            distance_records: |size| match size {
                0..=200 => 1_000_000,
                201..=2048 => 500_000,
                _ => 60_000,
            },
            distance_partitions: 6,
            distance_pairs: 3,
            // The limited link carries about 12,000 uncompressed records/s.
            compression_records: (500_000, 100_000),
            compression_partitions: 6,
            compression_rounds: 2,
            latency_rates: args.rates.clone().unwrap_or(vec![1000, 10_000]),
            latency_partitions: args.partitions.clone().unwrap_or(vec![1, 6]),
            latency_secs: args.latency_secs.unwrap_or(20.0),
            settle: Duration::from_secs(3),
            idle_secs: 30.0,
            soak_secs: args.soak_secs.unwrap_or(600.0),
            ceiling_twice: true,
            // The targets are on 6 partitions.
            sink_sizes: args.sizes.clone().unwrap_or(vec![100, 1024, 10240]),
            sink_partitions: args.partitions.clone().unwrap_or(vec![6]),
            per_record_records: 50_000,
        }
    }
}

fn wanted(args: &Args, part: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| part.contains(o.as_str()))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // `cargo bench` passes --bench; `cargo test --all-targets` passes test
    // harness arguments instead (filters, --nocapture), which are not ours:
    // then only the pure parts are checked, with no broker.
    if !std::env::args().any(|a| a == "--bench") {
        rt.block_on(self_check())?;
        println!("relay bench: self-checks passed (run scripts/bench.sh for measurements)");
        return Ok(());
    }
    // The control plane runs in this process: its memory is handled as its
    // binary handles it (src/bin/control-plane.rs).
    connectivity_common::memory::keep_freed_pages();
    let _trim = rt.spawn(connectivity_common::memory::trim_periodically(
        connectivity_common::memory::CONTROL_PLANE_TRIM_EVERY,
    ));
    rt.block_on(run(Args::parse()))
}

async fn self_check() -> anyhow::Result<()> {
    broker::self_check()?;
    meter::self_check()?;
    gc::self_check()?;
    svg::self_check()?;
    proxy::self_check().await?;
    report::self_check()?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.render {
        return render(&args, path);
    }
    let plan = plan(&args);
    let started = Instant::now();
    let out = clean_out(&args.out)?;
    let machine = machine(&args);
    let ctx = start(&args, &out).await?;
    let mut results = new_results(&args, machine, &ctx.tuning);

    let relay_only = args.only.iter().any(|o| o == "relay");
    if wanted(&args, "throughput") || relay_only {
        parts::throughput(&args, &plan, &ctx, relay_only, &mut results.runs).await?;
    }
    if wanted(&args, "distance") {
        parts::distance(&args, &plan, &ctx, &mut results.runs).await?;
    }
    if wanted(&args, "compression") {
        parts::compression(&args, &plan, &ctx, &mut results.runs).await?;
    }
    if wanted(&args, "sinks") {
        parts::sinks(&args, &plan, &ctx, &mut results.runs, &mut results.latency).await?;
    }
    if wanted(&args, "latency") {
        parts::latency(&plan, &ctx, &mut results.latency).await?;
    }
    if wanted(&args, "idle") {
        results.idle.push(parts::idle(&plan, &ctx).await?);
    }
    if wanted(&args, "soak") && plan.soak_secs > 0.0 {
        results.soak = Some(parts::soak(&plan, &ctx).await?);
    }

    ctx.system.stop().await;
    results.machine.loadavg_end = procstat::loadavg();
    results.notes.push(format!(
        "Whole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    write(&args, &out, &results)
}

/// `--render`: the report and charts of an earlier run's results.json.
fn render(args: &Args, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let results: report::Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    std::fs::create_dir_all(&args.out)?;
    write(args, &args.out, &results)
}

/// The results directory, absolute, without the agents and sink files of
/// an earlier run.
fn clean_out(out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(out)?;
    for old in ["agents", "sink"] {
        let _ = std::fs::remove_dir_all(out.join(old));
    }
    Ok(out)
}

/// The machine's facts, printed, with a warning if it is busy.
fn machine(args: &Args) -> procstat::Machine {
    let machine = procstat::Machine::now(&args.profile);
    println!(
        "machine: {} x {}, {}, load {}",
        machine.nproc, machine.cpu_model, machine.kernel, machine.loadavg_start
    );
    if procstat::load1() > machine.nproc as f64 / 2.0 && !args.short {
        println!(
            "warning: the machine is busy (load {}); numbers will be low and noisy",
            machine.loadavg_start
        );
    }
    machine
}

/// The broker, the agent binary and the control plane every scenario uses.
async fn start(args: &Args, out: &Path) -> anyhow::Result<Ctx> {
    let broker = broker::Broker::from_env_file(&args.broker_env)?;
    anyhow::ensure!(
        args.agent_bin.is_file(),
        "agent binary {} not found; build it (scripts/bench.sh does)",
        args.agent_bin.display()
    );
    let system = system::System::start(&out.join("control-plane"), args.cp_nodelay).await?;
    let tuning = scenarios::Tuning {
        window: args.window,
        window_bytes: args.window_bytes,
        max_wait_ms: args.max_wait_ms,
        max_records: args.max_records,
    };
    Ctx::new(
        broker,
        system,
        args.agent_bin.clone(),
        args.cp_bin.clone(),
        out.to_path_buf(),
        tuning,
    )
}

/// Results with nothing measured yet, and notes on how this run differs
/// from a standard one.
fn new_results(
    args: &Args,
    machine: procstat::Machine,
    tuning: &scenarios::Tuning,
) -> report::Results {
    let mut notes = Vec::new();
    if args.short {
        notes.push("Short run (CI): tiny volumes, numbers mean nothing.".into());
    }
    if args.cp_nodelay {
        notes.push("Diagnosis run: the control plane's sockets have TCP_NODELAY (set on the listener by the bench).".to_owned());
    }
    if args.rtt_ms != RTT_MS {
        notes.push(format!(
            "Diagnosis run: the distance runs add {} ms of round trip, not 50 ms (the tables' \"+50 ms\" labels mean this delay).",
            args.rtt_ms / 2 * 2
        ));
    }
    if *tuning != scenarios::Tuning::default() {
        notes.push(format!(
            "Diagnosis run: relay jobs changed from their defaults: {tuning:?}."
        ));
    }
    report::Results {
        machine,
        command: args.command.clone(),
        short: args.short,
        runs: Vec::new(),
        latency: Vec::new(),
        idle: Vec::new(),
        soak: None,
        notes,
    }
}

/// report.md, results.json and the charts, into `out`.
fn write(args: &Args, out: &std::path::Path, results: &report::Results) -> anyhow::Result<()> {
    let md = results.markdown();
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut others = Vec::new();
    for c in &args.compare {
        let (label, path) = c
            .split_once('=')
            .with_context(|| format!("--compare {c}: write LABEL=path/to/results.json"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        others.push((
            label.to_owned(),
            serde_json::from_str::<report::Results>(&text)
                .with_context(|| format!("parsing {path}"))?,
        ));
    }
    std::fs::write(out.join("throughput.svg"), results.throughput_svg(&others))?;
    if let Some(svg) = results.soak_svg() {
        std::fs::write(out.join("soak-rss.svg"), svg)?;
    }
    println!("\n{md}");
    println!(
        "written: {}/report.md, results.json, throughput.svg{}",
        out.display(),
        if results.soak.is_some() {
            ", soak-rss.svg"
        } else {
            ""
        }
    );
    Ok(())
}
