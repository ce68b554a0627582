//! Shopify's Toxiproxy as the fault proxy between the agent and the control
//! plane (and between the agent and the broker): `toxiproxy-server` runs as a
//! subprocess on a free loopback port with the scenario's seed, and is
//! driven through its HTTP API. `scripts/test.sh` and `scripts/chaos.sh`
//! install it with `go install` into `target/tools/` when it is missing.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Where the server binary is: `$TOXIPROXY_SERVER`, `target/tools/`, or PATH.
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOXIPROXY_SERVER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/toxiproxy-server");
    if local.is_file() {
        return local;
    }
    PathBuf::from("toxiproxy-server")
}

pub struct Toxiproxy {
    api: String,
    http: reqwest::Client,
    child: Child,
}

impl Toxiproxy {
    pub async fn start(seed: u64, log: &std::path::Path) -> Toxiproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(log).expect("toxiproxy log");
        let child = Command::new(server_bin())
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-seed", &(seed as i64).to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; scripts/chaos.sh installs it (go install github.com/Shopify/toxiproxy/v2/cmd/server)",
                    server_bin().display()
                )
            });
        let proxy = Toxiproxy {
            api: format!("http://127.0.0.1:{port}"),
            // No idle pool: toxiproxy closes idle keep-alive connections, and a
            // request sent on one just as it closes fails with IncompleteMessage.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy
            .http
            .get(format!("{}/version", proxy.api))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "toxiproxy did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("toxiproxy API");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "toxiproxy {path}: {status} {v}");
        v
    }

    /// A proxy to `upstream` on a free port; returns its `host:port`.
    pub async fn proxy(&self, name: &str, upstream: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/proxies",
                Some(json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true})),
            )
            .await;
        v["listen"].as_str().expect("listen address").to_string()
    }

    /// Add a toxic (`reset_peer`, `timeout`, `latency`, `bandwidth`, ...).
    pub async fn add(&self, proxy: &str, toxic: &str, kind: &str, stream: &str, attributes: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}/toxics"),
            Some(json!({"name": toxic, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})),
        )
        .await;
    }

    pub async fn remove(&self, proxy: &str, toxic: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/proxies/{proxy}/toxics/{toxic}"),
            None,
        )
        .await;
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
