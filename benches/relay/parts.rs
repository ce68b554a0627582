//! The parts of a run, in the order `run` calls them: each fills its
//! topics, runs its scenarios, prints a line per run and adds the results.

use crate::broker::Payload;
use crate::proxy::Link;
use crate::scenarios::{self, Consumer, Ctx, Filled};
use crate::system::SinkKind;
use crate::{Args, Plan, ceiling, report};
use connectivity_protocol::job::Compression;
use std::time::Duration;

/// Throughput: each consumer drains each topic; with `relay_only` only the
/// relay to a discard sink does (for profiling it).
pub async fn throughput(
    args: &Args,
    plan: &Plan,
    ctx: &Ctx,
    relay_only: bool,
    runs: &mut Vec<report::Run>,
) -> anyhow::Result<()> {
    for &size in &plan.sizes {
        for &partitions in &plan.partitions {
            let n = scaled((plan.records)(size), args.scale);
            println!(
                "\n== throughput: {size} B records, {partitions} partitions: filling {n} records"
            );
            let f = scenarios::fill(ctx, size, partitions, n).await?;
            println!("   filled at {:.0} records/s", f.fill_rec_per_s);
            let drained = if relay_only {
                vec![scenarios::drain_relay_direct(ctx, &f, SinkKind::Discard).await?]
            } else {
                drain_every_way(args, plan, ctx, &f).await?
            };
            keep(runs, drained);
            ctx.broker.delete_topic(&f.topic).await?;
        }
    }
    Ok(())
}

/// The ceilings (bare rdkafka, kcat), the floor and the relay, one topic.
async fn drain_every_way(
    args: &Args,
    plan: &Plan,
    ctx: &Ctx,
    f: &Filled,
) -> anyhow::Result<Vec<report::Run>> {
    let mut runs = vec![
        scenarios::drain_rdkafka(ctx, f, ceiling::Settings::Defaults).await?,
        scenarios::drain_kcat(ctx, f).await?,
        scenarios::drain_rdkafka(ctx, f, ceiling::Settings::Agent).await?,
        scenarios::drain_floor(ctx, f).await?,
    ];
    for ms in &args.queue_backoff {
        let settings = ceiling::Settings::AgentQueueBackoff(*ms);
        runs.push(scenarios::drain_rdkafka(ctx, f, settings).await?);
    }
    runs.push(scenarios::drain_relay_direct(ctx, f, SinkKind::Discard).await?);
    runs.push(scenarios::drain_relay_direct(ctx, f, SinkKind::Jsonl).await?);
    if plan.ceiling_twice {
        runs.push(scenarios::drain_rdkafka(ctx, f, ceiling::Settings::Defaults).await?);
    }
    Ok(runs)
}

/// Distance: the relay direct once, then through the proxy without and
/// with the delay, alternately, so that the machine's noise falls on both
/// alike.
pub async fn distance(
    args: &Args,
    plan: &Plan,
    ctx: &Ctx,
    runs: &mut Vec<report::Run>,
) -> anyhow::Result<()> {
    let delayed = Some(Link::delay(Duration::from_millis(args.rtt_ms / 2)));
    let mut links = vec![None];
    for _ in 0..plan.distance_pairs {
        links.extend([Some(Link::delay(Duration::ZERO)), delayed]);
    }
    for &size in &plan.sizes {
        let n = scaled((plan.distance_records)(size), args.scale);
        let partitions = plan.distance_partitions;
        println!("\n== distance: {size} B records, {partitions} partitions: filling {n} records");
        let f = scenarios::fill(ctx, size, partitions, n).await?;
        for &link in &links {
            let mut r =
                scenarios::drain_relay(ctx, &f, SinkKind::Discard, link, Compression::None).await?;
            r.part = report::DISTANCE.into();
            keep(runs, [r]);
        }
        ctx.broker.delete_topic(&f.topic).await?;
    }
    Ok(())
}

/// Compression: each payload, on the loopback and over the limited link,
/// with each codec in turn.
pub async fn compression(
    args: &Args,
    plan: &Plan,
    ctx: &Ctx,
    runs: &mut Vec<report::Run>,
) -> anyhow::Result<()> {
    let limited = Link {
        one_way: Duration::from_millis(report::LINK_ONE_WAY_MS),
        bytes_per_s: Some(report::LINK_BYTES_PER_S),
    };
    for payload in [Payload::Words, Payload::Random] {
        for (link, n) in [
            (None, plan.compression_records.0),
            (Some(limited), plan.compression_records.1),
        ] {
            let n = scaled(n, args.scale);
            compression_topic(plan, ctx, payload, link, n, runs).await?;
        }
    }
    Ok(())
}

/// One compression topic: `n` records of `payload`, drained over `link`
/// with each codec, `plan.compression_rounds` times.
async fn compression_topic(
    plan: &Plan,
    ctx: &Ctx,
    payload: Payload,
    link: Option<Link>,
    n: u64,
    runs: &mut Vec<report::Run>,
) -> anyhow::Result<()> {
    let partitions = plan.compression_partitions;
    println!(
        "\n== compression: 1 KiB records of {}, {partitions} partitions, {}: filling {n} records",
        payload.name(),
        if link.is_some() {
            "limited link"
        } else {
            "loopback"
        }
    );
    let f = scenarios::fill_with(ctx, 1024, partitions, n, payload).await?;
    let codecs = [Compression::None, Compression::Lz4, Compression::Zstd];
    for _ in 0..plan.compression_rounds {
        for codec in codecs {
            let mut r = scenarios::drain_relay(ctx, &f, SinkKind::Discard, link, codec).await?;
            r.part = report::COMPRESSION.into();
            keep(runs, [r]);
        }
    }
    ctx.broker.delete_topic(&f.topic).await
}

/// Sinks: one topic per size drained by the relay into each sink in turn
/// (discard, JSONL, webhook, webhook with larger batches), a smaller topic
/// into the webhook a record at a time, and the webhook's latency at each
/// rate.
pub async fn sinks(
    args: &Args,
    plan: &Plan,
    ctx: &Ctx,
    runs: &mut Vec<report::Run>,
    latency: &mut Vec<report::LatencyRun>,
) -> anyhow::Result<()> {
    for &size in &plan.sink_sizes {
        for &partitions in &plan.sink_partitions {
            let n = scaled((plan.records)(size), args.scale);
            println!("\n== sinks: {size} B records, {partitions} partitions: filling {n} records");
            let f = scenarios::fill(ctx, size, partitions, n).await?;
            let each = [
                (SinkKind::Discard, None, report::RELAY_DISCARD),
                (SinkKind::Jsonl, None, report::RELAY_JSONL),
                (SinkKind::Webhook, None, report::RELAY_WEBHOOK),
                (SinkKind::Webhook, Some(10_000), report::RELAY_WEBHOOK_BIG),
            ];
            for (sink, max_records, name) in each {
                let mut r = scenarios::drain_relay_batches(
                    ctx,
                    &f,
                    sink,
                    None,
                    Compression::None,
                    max_records,
                )
                .await?;
                (r.part, r.consumer) = (report::SINKS.into(), name.into());
                keep(runs, [r]);
            }
            let mut r = scenarios::drain_relay_process(ctx, &f).await?;
            r.part = report::SINKS.into();
            keep(runs, [r]);
            peer(args, ctx, &f, runs).await?;
            ctx.broker.delete_topic(&f.topic).await?;
            let n = scaled(plan.per_record_records, args.scale);
            println!("   a POST per record: filling {n} records");
            let f = scenarios::fill(ctx, size, partitions, n).await?;
            let mut r = scenarios::drain_relay_direct(ctx, &f, SinkKind::WebhookRecord).await?;
            r.part = report::SINKS.into();
            keep(runs, [r]);
            ctx.broker.delete_topic(&f.topic).await?;
        }
    }
    let (requests, connections) = ctx.system.received();
    println!("   webhook receiver: {requests} requests over {connections} connections");
    for &rate in &plan.latency_rates {
        for &partitions in &plan.sink_partitions {
            println!(
                "\n== latency: {rate} records/s of 1 KiB, {partitions} partitions, relay -> webhook"
            );
            let l = scenarios::latency(
                ctx,
                1024,
                partitions,
                rate,
                plan.latency_secs,
                Consumer::RelayWebhook,
                plan.settle,
            )
            .await?;
            println!(
                "   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
                l.latency.p50_ms, l.latency.p99_ms, l.latency.max_ms, l.latency.samples
            );
            latency.push(l);
        }
    }
    Ok(())
}

/// MirrorMaker 2 copies the same topic (not in the short form: its JVM
/// alone takes longer to start than the short form's whole part).
async fn peer(
    args: &Args,
    ctx: &Ctx,
    f: &Filled,
    runs: &mut Vec<report::Run>,
) -> anyhow::Result<()> {
    if args.short {
        return Ok(());
    }
    let Some(libs) = crate::mirror::libs() else {
        println!(
            "   MirrorMaker 2: skipped, no jars in target/mirror-maker-libs (scripts/bench.sh fetches them)"
        );
        return Ok(());
    };
    let r = crate::mirror::drain_mirror(ctx, f, &libs).await?;
    keep(runs, [r]);
    Ok(())
}

/// Latency: the bare consumer and the relay at each rate and partition
/// count.
pub async fn latency(
    plan: &Plan,
    ctx: &Ctx,
    latency: &mut Vec<report::LatencyRun>,
) -> anyhow::Result<()> {
    for &rate in &plan.latency_rates {
        for &partitions in &plan.latency_partitions {
            for consumer in [Consumer::Bare, Consumer::Relay] {
                println!(
                    "\n== latency: {rate} records/s of 1 KiB, {partitions} partitions, {consumer:?}"
                );
                let l = scenarios::latency(
                    ctx,
                    1024,
                    partitions,
                    rate,
                    plan.latency_secs,
                    consumer,
                    plan.settle,
                )
                .await?;
                println!(
                    "   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
                    l.latency.p50_ms, l.latency.p99_ms, l.latency.max_ms, l.latency.samples
                );
                latency.push(l);
            }
        }
    }
    Ok(())
}

/// The idle agent, on 6 partitions.
pub async fn idle(plan: &Plan, ctx: &Ctx) -> anyhow::Result<report::IdleRun> {
    println!("\n== idle agent, {:.0} s", plan.idle_secs);
    let i = scenarios::idle(ctx, 6, plan.idle_secs).await?;
    println!(
        "   {:.2}% of a core, at most {:.2} requests/s to the broker",
        i.cpu_pct_of_core, i.requests_per_s_max
    );
    Ok(i)
}

/// Memory over a long run at 10,000 records/s of 1 KiB on 6 partitions,
/// sampled about 120 times.
pub async fn soak(plan: &Plan, ctx: &Ctx) -> anyhow::Result<report::Soak> {
    println!(
        "\n== memory over {:.0} s at 10,000 records/s of 1 KiB",
        plan.soak_secs
    );
    let every = Duration::from_secs_f64((plan.soak_secs / 120.0).clamp(0.2, 5.0));
    let k = scenarios::soak(ctx, 1024, 6, 10_000, plan.soak_secs, every).await?;
    println!(
        "   RSS {:.1} -> {:.1} MiB, peak {:.1} MiB, trend {:+.2} MiB/10 min",
        k.rss_after_1min_mib, k.rss_end_mib, k.hwm_mib, k.slope_mib_per_10min
    );
    Ok(k)
}

/// A number of records times `--scale`, at least 1,000.
fn scaled(records: u64, scale: f64) -> u64 {
    (records as f64 * scale).max(1000.0) as u64
}

/// Print each run's line and add it to the results.
fn keep(runs: &mut Vec<report::Run>, new: impl IntoIterator<Item = report::Run>) {
    for r in new {
        print_run(&r);
        runs.push(r);
    }
}

fn print_run(r: &report::Run) {
    let sent = match (r.frame_mib, r.frame_raw_mib) {
        (Some(a), Some(b)) if b > 0.0 && r.compression.is_some() => {
            format!("  sent {:.0}% of the frame bytes", a / b * 100.0)
        }
        _ => String::new(),
    };
    // CPU s per million records, the agent's and the control plane's, so a
    // profiling run can be read from its output alone.
    let per_m = r.records as f64 / 1e6;
    let cpu = match (r.cpu_s_per_m, r.cp_cpu_s) {
        (Some(a), Some(c)) if per_m > 0.0 => {
            format!("  CPU s/M: agent {a:.2}, cp {:.2}", c / per_m)
        }
        _ => String::new(),
    };
    let rss = match (r.peak_rss_mib, r.cp_peak_rss_mib) {
        (Some(a), Some(c)) => format!("  peak RSS MiB: agent {a:.0}, cp {c:.0}"),
        _ => String::new(),
    };
    println!(
        "   {:<40} {:>10.0} rec/s {:>8.1} MiB/s  ({:.2} s){}{sent}{cpu}{rss}",
        r.consumer,
        r.rec_per_s,
        r.mib_per_s,
        r.secs,
        r.compression
            .as_ref()
            .map_or(String::new(), |c| format!("  {c}")),
    )
}
