//! A console page left open for a long time, in a real browser (headless
//! Debian `chromium` through `chromedriver`), against a real control plane,
//! a real agent (the binary) and the real Kafka broker, while records flow
//! all the time: the page must keep updating without a reload and its
//! memory, and the control plane's, must stay bounded (docs/CONSOLE.md,
//! "An hour with the page open").
//!
//! Ignored by default because it takes minutes; run it with
//!
//! ```sh
//! CONSOLE_SOAK_MINUTES=60 cargo test --test console_soak -- --ignored --nocapture
//! ```
//!
//! (2 minutes when `CONSOLE_SOAK_MINUTES` is unset). It prints a table of
//! the samples.

mod common;

use common::e2e::E2e;
use common::kafka;
use common::webdriver::{Browser, ChromeDriver};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Records produced per second during the whole soak: a steady, modest
/// flow (the machines that run this have two cores and other work).
const RECORDS_PER_SEC: u64 = 100;
/// The page counts as live if its last event is younger than this (the
/// stream carries one every 2 s).
const MAX_EVENT_AGE_MS: f64 = 10_000.0;
/// The JS heap (after a full GC) and the DOM node count of the last third
/// of the run may exceed the first third's maximum by 25% or by
/// [`HEAP_SLACK`] / [`NODE_SLACK`], whichever is larger. The first third
/// already holds the charts' full 10 minutes of history in an hour's run,
/// so a bounded page stays flat after it; 25% leaves room for V8's own
/// caches (compiled code, inline caches) settling, and the absolute slack
/// for short runs whose heap is a few MB where 25% is less than the noise.
/// A page that kept every snapshot would grow by its ~1,800 snapshots an
/// hour, steadily, and trip this.
const GROWTH: f64 = 0.25;
const HEAP_SLACK: u64 = 2 * 1024 * 1024;
const NODE_SLACK: u64 = 50;
/// The test process (the control plane runs in it, with the producer and
/// the test's own code) must stay under this resident size.
const PROCESS_RSS_LIMIT: u64 = 512 * 1024 * 1024;

fn soak_minutes() -> u64 {
    std::env::var("CONSOLE_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(2)
}

/// One sample of the page and the processes.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: u64,
    /// `performance.memory.usedJSHeapSize` right after `gc()`.
    heap: u64,
    /// `document.getElementsByTagName('*').length`.
    nodes: u64,
    /// Snapshot events the page received since it logged in.
    events: u64,
    /// Age of the page's last event, ms.
    event_age_ms: f64,
    /// The job page's "delivered" count.
    delivered: u64,
    /// The chromium renderer's RSS (the largest renderer of this test's
    /// chromium), bytes.
    renderer_rss: u64,
    /// This test process's RSS (the control plane runs in it), bytes.
    process_rss: u64,
    /// The agent binary's RSS, bytes.
    agent_rss: u64,
}

/// Replaces `EventSource` before the page logs in, so that every stream
/// the page opens counts its `snapshot` events in `window.__soak` (the page
/// itself keeps no count). Holds two numbers, nothing of the events.
const COUNT_EVENTS: &str = "
  const Base = window.EventSource;
  window.__soak = { events: 0, last: 0 };
  window.EventSource = class extends Base {
    constructor(url, opts) {
      super(url, opts);
      this.addEventListener('snapshot', () => { window.__soak.events++; window.__soak.last = Date.now(); });
    }
  };";

async fn sample(b: &Browser, driver_pid: u32, agent_pid: u32, start: Instant) -> Sample {
    let v = b
        .execute(
            "if (window.gc) window.gc();
             return [performance.memory.usedJSHeapSize, document.getElementsByTagName('*').length,
                     window.__soak.events, Date.now() - window.__soak.last,
                     (document.getElementById('job-delivered') || {}).textContent || ''];",
            vec![],
        )
        .await;
    Sample {
        at_s: start.elapsed().as_secs(),
        heap: v[0].as_u64().unwrap_or(0),
        nodes: v[1].as_u64().unwrap_or(0),
        events: v[2].as_u64().unwrap_or(0),
        event_age_ms: v[3].as_f64().unwrap_or(f64::MAX),
        delivered: v[4]
            .as_str()
            .unwrap_or("")
            .replace(',', "")
            .parse()
            .unwrap_or(0),
        renderer_rss: descendants(driver_pid)
            .into_iter()
            .filter(|p| cmdline(*p).contains("--type=renderer"))
            .map(rss)
            .max()
            .unwrap_or(0),
        process_rss: rss(std::process::id()),
        agent_rss: rss(agent_pid),
    }
}

/// VmRSS of `pid` in bytes (0 if it is gone).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The field after the name in parentheses (which may hold spaces).
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether the last third of `values` stays within `growth` (a fraction)
/// or `slack` (absolute) of the first third's maximum, whichever is
/// larger; `Err` says by how much it did not.
fn bounded(what: &str, values: &[u64], growth: f64, slack: u64) -> Result<(), String> {
    let third = (values.len() / 3).max(1);
    let first = values[..third].iter().copied().max().unwrap_or(0);
    let last = values[values.len() - third..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let allowed = first + ((first as f64 * growth) as u64).max(slack);
    if last <= allowed {
        Ok(())
    } else {
        Err(format!(
            "{what}: the last third's maximum {last} exceeds the first third's maximum {first} \
             by more than {:.0}% or {slack} (allowed up to {allowed})",
            growth * 100.0
        ))
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn print_table(samples: &[Sample]) {
    println!(
        "{:>6} {:>9} {:>6} {:>7} {:>8} {:>10} {:>12} {:>12} {:>9}",
        "min",
        "heap MB",
        "nodes",
        "events",
        "age ms",
        "delivered",
        "renderer MB",
        "process MB",
        "agent MB"
    );
    for s in samples {
        println!(
            "{:>6.1} {:>9} {:>6} {:>7} {:>8.0} {:>10} {:>12} {:>12} {:>9}",
            s.at_s as f64 / 60.0,
            mb(s.heap),
            s.nodes,
            s.events,
            s.event_age_ms,
            s.delivered,
            mb(s.renderer_rss),
            mb(s.process_rss),
            mb(s.agent_rss)
        );
    }
    let summary = |what: &str, f: &dyn Fn(&Sample) -> String, max: String| {
        let (a, z) = (&samples[0], &samples[samples.len() - 1]);
        println!("{what:>12}: first {}, last {}, max {max}", f(a), f(z));
    };
    let max = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    summary("heap MB", &|s| mb(s.heap), mb(max(|s| s.heap)));
    summary(
        "DOM nodes",
        &|s| s.nodes.to_string(),
        max(|s| s.nodes).to_string(),
    );
    summary(
        "renderer MB",
        &|s| mb(s.renderer_rss),
        mb(max(|s| s.renderer_rss)),
    );
    summary(
        "process MB",
        &|s| mb(s.process_rss),
        mb(max(|s| s.process_rss)),
    );
    summary("agent MB", &|s| mb(s.agent_rss), mb(max(|s| s.agent_rss)));
    summary(
        "events",
        &|s| s.events.to_string(),
        max(|s| s.events).to_string(),
    );
}

/// Produce numbered records into `topic` at [`RECORDS_PER_SEC`] until
/// the task is aborted; counts what the broker acknowledged in `sent`.
async fn produce_steadily(broker: kafka::TestBroker, topic: String, sent: Arc<AtomicU64>) {
    let producer: FutureProducer = broker
        .plaintext_config()
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "20")
        .create()
        .expect("create Kafka producer");
    // Ten batches a second, each sent together and awaited.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let batch: Vec<_> = (0..RECORDS_PER_SEC / 10)
            .map(|_| {
                n += 1;
                (format!("k{n}"), json!({ "n": n }).to_string())
            })
            .collect();
        let sends = batch.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&topic).key(k).payload(v),
                Duration::from_secs(30),
            )
        });
        for r in futures_util::future::join_all(sends).await {
            r.expect("produce a record");
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes: CONSOLE_SOAK_MINUTES=60 cargo test --test console_soak -- --ignored --nocapture"]
async fn a_job_page_left_open_keeps_updating_with_bounded_memory() {
    let minutes = soak_minutes();
    let duration = Duration::from_secs(minutes * 60);
    // A sample a minute; at least six in a short run.
    let every = (duration / 6).min(Duration::from_secs(60));

    let t = E2e::start().await;
    let mut agent = t.spawn_agent_binary("agent-1");
    t.wait_binary_connected(&mut agent, "agent-1", None).await;

    let topic = kafka::unique_topic("console-soak");
    kafka::create_topic(&t.broker, &topic, 3).await;
    let id = "soak";
    let mut job = t.job(id, &topic);
    job["sink"] = json!({"kind": "discard"});
    t.create_job(&job).await;
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce_steadily(
        t.broker.clone(),
        topic.clone(),
        sent.clone(),
    ));

    let driver = ChromeDriver::start().await;
    // Exact heap numbers (without the flag chromium rounds them and
    // refreshes them only every 20 minutes) and `gc()`, so that a sample
    // measures what the page keeps, not the garbage not yet collected.
    let b = driver
        .browser_with_args(
            1280,
            800,
            &["--enable-precise-memory-info", "--js-flags=--expose-gc"],
        )
        .await;
    let base = t.cp.base_url();
    b.goto(&format!("{base}/console/")).await;
    b.find("#token").await;
    b.execute(COUNT_EVENTS, vec![]).await;
    b.fill("#token", common::control_plane::CONSOLE_TOKEN).await;
    b.click("#login-form button[type=submit]").await;
    b.wait_text("#live", "the event stream", |t| t == "live")
        .await;
    b.click("#nav a[href='#/jobs']").await;
    b.click(&format!("a[href='#/jobs/{id}']")).await;
    b.wait_text("#job-delivered", "records delivered", |t| {
        t.replace(',', "").parse::<u64>().is_ok_and(|n| n > 0)
    })
    .await;
    let url = b.url().await;

    let start = Instant::now();
    let agent_pid = agent.id();
    let mut samples = vec![sample(&b, driver.pid(), agent_pid, start).await];
    while start.elapsed() < duration {
        tokio::time::sleep(every.min(duration.saturating_sub(start.elapsed()))).await;
        let s = sample(&b, driver.pid(), agent_pid, start).await;
        println!(
            "soak {:.1} min: heap {} MB, {} nodes, {} events, delivered {}, renderer {} MB, process {} MB",
            s.at_s as f64 / 60.0,
            mb(s.heap),
            s.nodes,
            s.events,
            s.delivered,
            mb(s.renderer_rss),
            mb(s.process_rss)
        );
        samples.push(s);
        if let Some(status) = agent.try_wait().expect("try_wait") {
            panic!("the agent exited with {status} during the soak");
        }
    }
    producer.abort();
    println!(
        "\n{minutes} min, {} records produced, page {url}",
        sent.load(Ordering::Relaxed)
    );
    print_table(&samples);

    // Still on the same page, never reloaded: the counter injected before
    // login would be gone after a reload.
    assert_eq!(b.url().await, url, "the page navigated away");
    let last = samples.last().expect("samples");
    assert!(
        last.event_age_ms < MAX_EVENT_AGE_MS,
        "the page's last event is {} ms old",
        last.event_age_ms
    );
    // Fresh data: the delivered count rose over the last two samples' span,
    // and one event arrived per 2 s on the whole (a stream that stalled for
    // a while would fall short).
    let before = &samples[samples.len().saturating_sub(3)];
    assert!(
        last.delivered > before.delivered,
        "delivered count stuck at {} since {:.1} min",
        last.delivered,
        before.at_s as f64 / 60.0
    );
    let expected = (last.at_s - samples[0].at_s) / 2;
    assert!(
        last.events - samples[0].events >= expected * 9 / 10,
        "{} events in {} s, expected about {expected}",
        last.events - samples[0].events,
        last.at_s - samples[0].at_s
    );
    let heaps: Vec<u64> = samples.iter().map(|s| s.heap).collect();
    let nodes: Vec<u64> = samples.iter().map(|s| s.nodes).collect();
    let problems: Vec<String> = [
        bounded("JS heap (bytes)", &heaps, GROWTH, HEAP_SLACK),
        bounded("DOM nodes", &nodes, GROWTH, NODE_SLACK),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let rss_max = samples.iter().map(|s| s.process_rss).max().unwrap_or(0);
    assert!(
        rss_max < PROCESS_RSS_LIMIT,
        "the test process (control plane in it) reached {} MB, over {} MB",
        mb(rss_max),
        mb(PROCESS_RSS_LIMIT)
    );

    b.quit().await;
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn the_bound_trips_on_growth_and_not_on_a_flat_line() {
    let mb = 1024 * 1024;
    // Flat with noise: within bounds.
    let flat = [10 * mb, 11 * mb, 10 * mb, 11 * mb, 10 * mb, 12 * mb];
    assert_eq!(bounded("heap", &flat, 0.25, 2 * mb), Ok(()));
    // A steady leak of 1 MB a sample: the last third (15, 16) exceeds
    // 11 + 2.75.
    let leak: Vec<u64> = (10..=16).map(|m| m * mb).collect();
    let err = bounded("heap", &leak, 0.25, 2 * mb).unwrap_err();
    assert!(
        err.contains("maximum 16777216 exceeds the first third's maximum 11534336"),
        "{err}"
    );
    // Small values: the absolute slack applies, not the 25%.
    assert_eq!(bounded("nodes", &[100, 100, 100, 149], 0.25, 50), Ok(()));
    assert!(bounded("nodes", &[100, 100, 100, 151], 0.25, 50).is_err());
    // A single sample compares with itself.
    assert_eq!(bounded("nodes", &[7], 0.25, 0), Ok(()));
}
