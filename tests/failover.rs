//! Agent groups with failover, against the real broker: two agents of one
//! group share a six-partition topic; when one dies (SIGKILL) or only loses
//! its control-plane session, the other takes every partition, and the sink
//! still gets every record exactly once.

mod common;

use common::e2e::{E2e, agents, assert_exactly_once_in_order, numbered, positions, produce};
use common::kafka;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

/// How fast partitions must move (job session timeout is 6 s; see docs/JOBS.md).
const FAILOVER_LIMIT: Duration = Duration::from_secs(15);

/// Partitions each connected agent reports as running, by agent id.
fn holders(view: &Value) -> Vec<(String, BTreeSet<i64>)> {
    agents(view)
        .into_iter()
        .filter(|a| a["agent_state"] == "connected" && a["phase"] == "running")
        .map(|a| {
            let parts = a["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["partition"].as_i64())
                .collect();
            (a["agent_id"].as_str().unwrap_or_default().to_owned(), parts)
        })
        .filter(|(_, p): &(String, BTreeSet<i64>)| !p.is_empty())
        .collect()
}

async fn wait_split(t: &E2e, job: &str) -> Vec<(String, BTreeSet<i64>)> {
    let view = t
        .wait_job(job, "two agents sharing the six partitions", |v| {
            let h = holders(v);
            h.len() == 2 && h.iter().map(|(_, p)| p.len()).sum::<usize>() == 6
        })
        .await;
    holders(&view)
}

async fn wait_single_holder(t: &E2e, job: &str, survivor: &str, since: Instant) -> Duration {
    t.wait_job(job, "the surviving agent holding all six partitions", |v| {
        let h = holders(v);
        h.len() == 1 && h[0].0 == survivor && h[0].1.len() == 6
    })
    .await;
    since.elapsed()
}

/// A TCP relay between an agent and the control plane that the test can cut,
/// like a firewall dropping the agent's outbound session.
struct Cuttable {
    port: u16,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            let mut conns: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            loop {
                tokio::select! {
                    Ok((mut inbound, _)) = listener.accept() => {
                        if c.load(Ordering::SeqCst) { continue; }
                        let c2 = c.clone();
                        conns.push(tokio::spawn(async move {
                            let Ok(mut out) = TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = copy_bidirectional(&mut inbound, &mut out) => {}
                                _ = async { while !c2.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await; } } => {
                                    // Silently stop forwarding: no FIN, no RST, like a dead link.
                                    std::future::pending::<()>().await;
                                }
                            }
                        }));
                    }
                }
            }
        });
        Cuttable { port, cut, task }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn killed_agent_partitions_move_to_the_other_agent_and_nothing_is_lost_or_doubled() {
    let t = E2e::start().await;
    let topic = kafka::unique_topic("failover-kill");
    kafka::create_topic(&t.broker, &topic, 6).await;
    let first = numbered(0, 600);
    let at = produce(&t.broker, &topic, &first).await;
    let mut produced = positions(&first, &at);

    let mut victim = t.spawn_agent_binary("victim");
    t.wait_binary_connected(&mut victim, "victim", None).await;
    let survivor = t.spawn_agent("survivor");
    let survivor_id = std::fs::read_to_string(t.dir.path().join("survivor").join("agent-id")).ok();
    t.create_job(&t.job("kill", &topic)).await;
    let split = wait_split(&t, "kill").await;
    let survivor_id = survivor_id
        .or_else(|| std::fs::read_to_string(t.dir.path().join("survivor").join("agent-id")).ok())
        .unwrap()
        .trim()
        .to_owned();
    assert!(split.iter().any(|(id, _)| *id == survivor_id), "{split:?}");

    // Kill the victim mid-stream: no drain, no commit, no goodbye.
    let more = numbered(600, 600);
    let producer = {
        let broker = t.broker.clone();
        let topic = topic.clone();
        let more = more.clone();
        tokio::spawn(async move { produce(&broker, &topic, &more).await })
    };
    victim.kill().unwrap();
    let killed_at = Instant::now();
    victim.wait().unwrap();
    let moved_in = wait_single_holder(&t, "kill", &survivor_id, killed_at).await;
    eprintln!("partitions moved {moved_in:?} after SIGKILL");
    assert!(moved_in < FAILOVER_LIMIT, "failover took {moved_in:?}");

    let at_more = producer.await.unwrap();
    produced.extend(positions(&more, &at_more));
    let got = t.wait_records("kill", produced.len()).await;
    assert_exactly_once_in_order(&got, &produced);
    survivor.stop().await;
    t.cp.stop().await;
}

#[tokio::test]
async fn agent_that_loses_only_its_session_gives_up_its_partitions_after_the_grace() {
    let t = E2e::start().await;
    let topic = kafka::unique_topic("failover-cut");
    kafka::create_topic(&t.broker, &topic, 6).await;
    let first = numbered(0, 300);
    let at = produce(&t.broker, &topic, &first).await;
    let mut produced = positions(&first, &at);

    // Agent "cut" reaches the control plane through a relay we can cut.
    let relay = Cuttable::start(t.cp.addr).await;
    let cut_state = t.dir.path().join("cut");
    std::fs::create_dir_all(&cut_state).unwrap();
    let text = t.profile_text(&cut_state).replace(
        &t.cp.base_url(),
        &format!("https://127.0.0.1:{}", relay.port),
    );
    let profile =
        connectivity_agent::config::Profile::parse(std::path::Path::new("cut.cfg"), text).unwrap();
    let secrets = connectivity_agent::config::SecretValues::from_profile(&profile);
    let cfg = connectivity_agent::config::validate(&profile, &secrets, &|_| None).unwrap();
    let grace = cfg.session_grace;
    let cut_stop = tokio_util::sync::CancellationToken::new();
    let s = cut_stop.clone();
    let cut_agent =
        tokio::spawn(async move { connectivity_agent::agent::runner::run_agent(cfg, s).await });

    let stays = t.spawn_agent("stays");
    t.create_job(&t.job("cut", &topic)).await;
    wait_split(&t, "cut").await;
    let stays_id = std::fs::read_to_string(t.dir.path().join("stays").join("agent-id"))
        .unwrap()
        .trim()
        .to_owned();

    relay.cut();
    let cut_at = Instant::now();
    // The Kafka side of the cut agent is fine; only its session is gone. It
    // must stop fetching and, after the grace, leave the group.
    let moved_in = wait_single_holder(&t, "cut", &stays_id, cut_at).await;
    eprintln!("partitions moved {moved_in:?} after the session was cut (grace {grace:?})");
    assert!(
        moved_in >= grace,
        "partitions moved before the grace ended: {moved_in:?}"
    );
    assert!(
        moved_in < FAILOVER_LIMIT + grace,
        "failover took {moved_in:?}"
    );

    let more = numbered(300, 300);
    let at_more = produce(&t.broker, &topic, &more).await;
    produced.extend(positions(&more, &at_more));
    let got = t.wait_records("cut", produced.len()).await;
    assert_exactly_once_in_order(&got, &produced);
    assert!(
        !cut_agent.is_finished(),
        "the cut agent must keep retrying, not stop"
    );
    cut_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), cut_agent).await;
    stays.stop().await;
    t.cp.stop().await;
}
