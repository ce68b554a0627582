//! The web console's cost with 1,000 agents and 200 jobs
//! (`docs/PERFORMANCE.md`, "Console").
//!
//! `cargo bench -p connectivity-control-plane --bench console` starts a real
//! control plane in this process (made by `control-plane init`), fills its
//! registry with 1,000 connected agents, each reporting one of 200 jobs with
//! 3 partitions, and measures over HTTPS on the loopback:
//!
//! 1. the console API answers the views read (`GET /api/v1/agents`,
//!    `/api/v1/jobs`), p50 and p99 over many requests on one connection;
//! 2. a load of the agents view as the browser makes it: the page, its
//!    session, and a new event stream until its first snapshot (spaced so
//!    that no snapshot is reused), p50 and max;
//! 3. the CPU the live updates cost: the process's CPU time (from
//!    `/proc/self/stat`, the streams' readers included) over a fixed wall
//!    time with 1 and with 10 pages open, minus the same time with none,
//!    as % of one core. Agents heartbeat every second throughout.
//!
//! Under `cargo test` (no `--bench` argument) it runs a few seconds with
//! 50 agents, to check that it still works.

use connectivity_control_plane::init::{self, InitOptions};
use connectivity_control_plane::registry::NewSession;
use connectivity_control_plane::{ControlPlane, ControlPlaneConfig, job_input};
use connectivity_protocol::HostFacts;
use connectivity_protocol::job::{JobPhase, JobState, PartitionState};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Scale {
    agents: usize,
    jobs: usize,
    api_requests: usize,
    page_loads: usize,
    cpu_window: Duration,
}

const GROUP: &str = "BENCH_GROUP";

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Bench {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Bench {
    async fn get(&self, path: &str) -> (u16, bytes::Bytes) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.bytes().await.expect("body"))
    }

    /// Time `n` requests of `path`; (p50, p99, bytes of one answer).
    async fn timed(&self, path: &str, n: usize) -> (Duration, Duration, usize) {
        let mut times = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let t = Instant::now();
            let (status, body) = self.get(path).await;
            times.push(t.elapsed());
            assert_eq!(status, 200, "{path}");
            size = body.len();
        }
        times.sort();
        (percentile(&times, 0.5), percentile(&times, 0.99), size)
    }

    /// Open the event stream; the response, once its headers are in.
    async fn events(&self, cookie: &str) -> reqwest::Response {
        let r = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .expect("events");
        assert_eq!(r.status(), 200);
        r
    }

    async fn login(&self) -> String {
        let r = self
            .http
            .post(format!("{}/console/login", self.base))
            .header("content-type", "application/json")
            .body(json!({"token": self.token}).to_string())
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 200);
        let set = r.headers()["set-cookie"].to_str().expect("cookie");
        set.split(';').next().expect("cookie").to_owned()
    }
}

/// Read the stream until one whole `snapshot` event; its size.
async fn first_snapshot(r: &mut reqwest::Response) -> usize {
    let mut buf = Vec::new();
    loop {
        let chunk = r.chunk().await.expect("stream").expect("stream ended");
        buf.extend_from_slice(&chunk);
        if let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            return i;
        }
    }
}

/// Keep reading a stream until cancelled; counts the bytes read.
fn drain(mut r: reqwest::Response, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return n,
                c = r.chunk() => match c {
                    Ok(Some(c)) => n += c.len(),
                    _ => return n,
                },
            }
        }
    })
}

async fn cpu_over(window: Duration) -> f64 {
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0
}

async fn run(scale: Scale) {
    let dir = tempfile::tempdir().expect("tempdir");
    let done = init::init(&InitOptions {
        dir: dir.path().join("cp"),
        hosts: vec!["127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().expect("addr"),
        group: GROUP.into(),
        agent_user: "agent".into(),
        server_days: 30,
    })
    .expect("init");
    let mut config = ControlPlaneConfig::load(&done.dir.join(init::CONFIG_FILE)).expect("config");
    config.max_agents = scale.agents + 10;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(config, listener, shutdown.clone())
        .await
        .expect("start");
    let port = cp.local_addr().port();

    for j in 0..scale.jobs {
        let def = job_input::from_json(json!({
            "spec": {"id": format!("job-{j:03}"), "bootstrap_servers": "stream.example.com:9092",
                     "topic": format!("TOPIC_{j}"), "consumer_group": format!("group-{j}"),
                     "security": {"protocol": "SASL_SSL",
                                  "sasl": {"mechanism": "PLAIN", "username": "tenancy/user/pool", "password": "secret"}}},
            "group": GROUP, "sink": {"kind": "discard"}
        }))
        .expect("job definition");
        cp.jobs().create(def).await.expect("create job");
    }
    let registry = cp.registry();
    let mut sessions = Vec::new();
    for a in 0..scale.agents {
        let (id, session) = (format!("agent-{a:04}"), format!("session-{a}"));
        registry
            .connect(NewSession {
                agent_id: id.clone(),
                agent_name: format!("db-host-{a}"),
                group: GROUP.into(),
                version: "0.1.0".into(),
                protocol_version: 1,
                host: HostFacts {
                    hostname: format!("db-host-{a}"),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                },
                proxy: None,
                principal: "user \"agent\"".into(),
                remote_addr: format!("10.0.{}.{}:40000", a / 250, a % 250)
                    .parse()
                    .expect("addr"),
                session_id: session.clone(),
                cancel: CancellationToken::new(),
            })
            .expect("room for the agent");
        let job = format!("job-{:03}", a % scale.jobs);
        registry.record_job_state(
            &id,
            &session,
            JobState {
                job_id: job,
                phase: JobPhase::Running,
                error: None,
                partitions: (0..3)
                    .map(|p| PartitionState {
                        partition: p,
                        fetched: 1000,
                        relayed: 1000,
                        acked: 990,
                        committed: 980,
                        high_watermark: Some(1200),
                    })
                    .collect(),
                records_relayed: 1000,
                bytes_relayed: 100_000,
                bytes_uncompressed: 100_000,
                batches_acked: 10,
            },
        );
        sessions.push((id, session));
    }
    // Heartbeats: every agent is heard from once a second.
    let beat = {
        let (registry, stop) = (registry.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (id, s) in &sessions {
                    registry.touch(id, s);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let tls = connectivity_common::tls::client_config(Some(&done.dir.join(init::CA_FILE)))
        .expect("client tls");
    let b = Bench {
        http: reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .expect("client"),
        base: format!("https://127.0.0.1:{port}"),
        token: done.console_token.expose().to_owned(),
    };
    let (status, _) = b.get("/api/v1/status").await; // verifies the token once (argon2)
    assert_eq!(status, 200);
    println!(
        "console bench: {} agents, {} jobs of 3 partitions each reported",
        scale.agents, scale.jobs
    );

    for path in ["/api/v1/agents", "/api/v1/jobs"] {
        let (p50, p99, size) = b.timed(path, scale.api_requests).await;
        println!(
            "  GET {path:<16} p50 {}  p99 {}  ({} requests, {} KB each)",
            ms(p50),
            ms(p99),
            scale.api_requests,
            size / 1024
        );
    }

    let cookie = b.login().await;
    let mut loads = Vec::new();
    let mut snapshot_bytes = 0;
    for _ in 0..scale.page_loads {
        // Past the half interval for which a snapshot is shared.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let t = Instant::now();
        let page = b
            .http
            .get(format!("{}/console/", b.base))
            .send()
            .await
            .expect("page");
        assert_eq!(page.status(), 200);
        page.bytes().await.expect("page body");
        let s = b
            .http
            .get(format!("{}/console/session", b.base))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("session");
        assert_eq!(s.status(), 200);
        let mut events = b.events(&cookie).await;
        snapshot_bytes = first_snapshot(&mut events).await;
        loads.push(t.elapsed());
    }
    loads.sort();
    println!(
        "  agents view load (page, session, first snapshot of {} KB): p50 {}  max {}  ({} loads)",
        snapshot_bytes / 1024,
        ms(percentile(&loads, 0.5)),
        ms(*loads.last().expect("loads")),
        loads.len()
    );

    let idle = cpu_over(scale.cpu_window).await;
    println!(
        "  CPU with no page open: {idle:.2}% of a core (heartbeats of {} agents)",
        scale.agents
    );
    for pages in [1, 10] {
        let stop = CancellationToken::new();
        let mut readers = Vec::new();
        for _ in 0..pages {
            readers.push(drain(b.events(&cookie).await, stop.clone()));
        }
        let used = cpu_over(scale.cpu_window).await;
        stop.cancel();
        let mut bytes = 0;
        for r in readers {
            bytes += r.await.expect("reader");
        }
        println!(
            "  CPU with {pages:>2} page(s) open: {used:.2}% of a core, {:.2}% more than none ({} KB/s streamed, readers included)",
            used - idle,
            (bytes as f64 / 1024.0 / scale.cpu_window.as_secs_f64()).round()
        );
    }

    shutdown.cancel();
    beat.abort();
    cp.stopped().await.expect("stopped");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let scale = if bench {
        Scale {
            agents: 1000,
            jobs: 200,
            api_requests: 200,
            page_loads: 10,
            cpu_window: Duration::from_secs(6),
        }
    } else {
        Scale {
            agents: 50,
            jobs: 10,
            api_requests: 5,
            page_loads: 1,
            cpu_window: Duration::from_millis(500),
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(scale));
}
