//! Issue 18: the chaos suite. Proves "nothing lost" under crashes, cuts,
//! restarts, overload and hostile peers, scenario by scenario: numbered
//! records go into a real broker while a fault runs; then the sink is read
//! and checked (no loss, no duplicate but the causes docs/DELIVERY.md names,
//! per-partition order, a committed offset never past what the sink holds,
//! bounded memory, recovery in time). One summary table, then
//! `N passed, N failed`; the exit code is non-zero if any invariant broke.
//!
//! `cargo test --test chaos` runs the short form of every scenario (CI);
//! `scripts/chaos.sh --minutes 30` is the long soak. Arguments:
//!
//! ```text
//! --seed N        replay a run (the seed is printed at the start)
//! --minutes M     soak: rotate through the scenarios for M minutes
//! --window S      seconds each fault runs (short form: 12)
//! --rate R        records produced per second (short form: 300)
//! NAME...         only the scenarios whose name starts with NAME
//! ```
//!
//! What each scenario does and the limits: docs/RELIABILITY.md.

#[path = "common/mod.rs"]
mod common;

#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/hostile_cp.rs"]
mod hostile_cp;
#[path = "chaos/login_flood.rs"]
mod login_flood;
#[path = "chaos/procs.rs"]
mod procs;
#[path = "chaos/scenarios.rs"]
mod scenarios;
#[path = "chaos/storm.rs"]
mod storm;
#[path = "chaos/toxiproxy.rs"]
mod toxiproxy;
#[path = "chaos/webhook.rs"]
mod webhook;
#[path = "chaos/world.rs"]
mod world;

use futures_util::FutureExt;
use scenarios::Intensity;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    seed: u64,
    minutes: Option<u64>,
    window: Option<Duration>,
    rate: Option<u64>,
    names: Vec<String>,
    list: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        seed: std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(18),
        minutes: None,
        window: None,
        rate: None,
        names: Vec::new(),
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--seed" => a.seed = value("--seed"),
            "--minutes" => a.minutes = Some(value("--minutes")),
            "--window" => a.window = Some(Duration::from_secs(value("--window"))),
            "--rate" => a.rate = Some(value("--rate")),
            "--list" => a.list = true,
            // What `cargo test -- <flags>` hands every test binary.
            s if s.starts_with('-') => {}
            s => a.names.push(s.to_string()),
        }
    }
    a
}

fn main() -> ExitCode {
    let args = parse_args();
    let all = scenarios::all();
    let root = rustix::process::geteuid().is_root();
    let chosen: Vec<&scenarios::Scenario> = all
        .iter()
        .filter(|s| {
            args.names.is_empty() || args.names.iter().any(|n| s.name.starts_with(n.as_str()))
        })
        .filter(|s| {
            // The JSONL sink faults mount a tmpfs.
            let ok = root || s.setup.tmpfs_mib.is_none();
            if !ok {
                eprintln!("chaos: {} skipped: mounting its tmpfs needs root", s.name);
            }
            ok
        })
        .collect();
    if args.list {
        for s in &chosen {
            println!("{}: test", s.name);
        }
        return ExitCode::SUCCESS;
    }
    if chosen.is_empty() {
        println!("0 passed, 0 failed");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = runtime.block_on(run_all(&args, &chosen));
    println!("\n{}", checker::table(&rows));
    for r in rows.iter().filter(|r| !r.passed()) {
        println!("{} FAILED:", r.scenario);
        for v in &r.violations {
            println!("  - {v}");
        }
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    println!(
        "seed {} (replay: scripts/chaos.sh --seed {} ...)",
        args.seed, args.seed
    );
    println!("{} passed, {failed} failed", rows.len() - failed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run_all(args: &Args, chosen: &[&scenarios::Scenario]) -> Vec<checker::Verdict> {
    connectivity_common::tls::install_default_provider();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let logs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/chaos/{stamp}-seed-{}", args.seed));
    eprintln!(
        "chaos: seed {}, logs of failed scenarios in {}",
        args.seed,
        logs.display()
    );
    let mut suite = world::Suite::start(args.seed, logs.clone()).await;
    // Short form: 12 s faults at 300 records/s; a soak: 45 s at 500.
    let soak = args.minutes.is_some();
    let intensity = Intensity {
        fault_window: args
            .window
            .unwrap_or(Duration::from_secs(if soak { 45 } else { 12 })),
        rate: args.rate.unwrap_or(if soak { 500 } else { 300 }),
    };
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    let mut order = common::processes::Rng(args.seed);
    let mut round = 0;
    loop {
        round += 1;
        let mut list: Vec<&&scenarios::Scenario> = chosen.iter().collect();
        if args.minutes.is_some() {
            // A soak mixes the faults: each round in another seeded order.
            for i in (1..list.len()).rev() {
                list.swap(i, order.index(i + 1));
            }
        }
        for s in list {
            if let Some(m) = args.minutes
                && started.elapsed() > Duration::from_secs(m * 60)
            {
                break;
            }
            eprintln!("chaos: {} ({})", s.name, s.what);
            let result = AssertUnwindSafe(scenarios::run(&mut suite, s, intensity))
                .catch_unwind()
                .await;
            let mut v = result.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                checker::Verdict {
                    scenario: s.name.to_string(),
                    violations: vec![format!("the scenario panicked: {msg}")],
                    ..Default::default()
                }
            });
            if args.minutes.is_some() {
                v.scenario = format!("{} #{round}", v.scenario);
            }
            eprintln!(
                "chaos: {} {} in {:.0} s",
                v.scenario,
                if v.passed() { "ok" } else { "FAILED" },
                v.seconds
            );
            rows.push(v);
        }
        match args.minutes {
            Some(m) if started.elapsed() < Duration::from_secs(m * 60) => continue,
            _ => break,
        }
    }
    suite.shutdown().await;
    if rows.iter().all(checker::Verdict::passed) {
        let _ = std::fs::remove_dir_all(&logs);
    }
    rows
}
