//! The agent's Prometheus metrics and health endpoint, against a real broker
//! and the real control plane.

mod common;

use common::e2e::{E2e, numbered, produce};
use common::kafka;
use std::time::{Duration, Instant};

async fn get(url: &str) -> (u16, String) {
    connectivity_common::tls::install_default_provider();
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

fn value_of(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn agent_serves_metrics_and_health() {
    let t = E2e::start().await;
    let topic = kafka::unique_topic("metrics");
    kafka::create_topic(&t.broker, &topic, 2).await;
    produce(&t.broker, &topic, &numbered(0, 200)).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = t.dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = t.agent_config(&state);
    cfg.metrics_address = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let agent =
        tokio::spawn(async move { connectivity_agent::agent::runner::run_agent(cfg, s).await });

    t.create_job(&t.job("m", &topic)).await;
    let mut bad = t.job("unreachable", &topic);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    bad["spec"]["bootstrap_servers"] = format!("127.0.0.1:{closed}").into();
    t.create_job(&bad).await;
    t.wait_records("m", 200).await;

    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = get(&format!("{base}/metrics")).await;
        let committed: f64 = body
            .lines()
            .filter(|l| {
                l.starts_with("connectivity_agent_partition_committed_offset{")
                    && l.contains("job=\"m\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // Lag needs the high watermark, from librdkafka statistics every 5 s.
        if status == 200
            && committed >= 200.0
            && body.contains("class=\"tcp\"")
            && body.contains("connectivity_agent_partition_lag{")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the relay:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value_of(&metrics, "connectivity_agent_session_connected "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value_of(
            &metrics,
            "connectivity_agent_job_records_relayed{job=\"m\"}"
        ),
        Some(200.0),
        "{metrics}"
    );
    // Uncompressed (the job's default): the frames went as they were.
    let bytes = value_of(&metrics, "connectivity_agent_job_bytes_relayed{job=\"m\"}");
    assert!(bytes.is_some_and(|b| b > 200.0 * 20.0), "{metrics}");
    assert_eq!(
        value_of(
            &metrics,
            "connectivity_agent_job_bytes_uncompressed{job=\"m\"}"
        ),
        bytes,
        "{metrics}"
    );
    assert!(
        value_of(
            &metrics,
            "connectivity_agent_batch_round_trip_seconds_count{job=\"m\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("connectivity_agent_job_errors_total{")
                && l.contains("job=\"unreachable\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("connectivity_agent_partition_lag{"),
        "{metrics}"
    );
    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok: session established\n"));

    // Without a session the agent is not healthy.
    t.cp.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(&format!("{base}/healthz")).await;
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz stayed {status} without a session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
}
