//! A webhook receiver the suite controls: accepts, answers slowly, fails
//! with 500, holds the answer past the sink's timeout (having kept the
//! records, so the resend is a duplicate docs/DELIVERY.md names), or stops
//! listening altogether (connections refused, open ones cut).
//!
//! Plain HTTP on loopback (the webhook sink allows `http://` only there),
//! served connection by connection with hyper so that "refuse" can close
//! the connections the sink keeps alive, not just the listener.

use super::checker::SinkRecord;
use axum::body::Body;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Accept,
    /// Keep the records, answer 200 after this long.
    Slow(Duration),
    /// Answer 500, keep nothing.
    Fail,
    /// Keep the records, answer after this long (past the sink's timeout).
    Hang(Duration),
}

#[derive(Default)]
struct Store {
    /// Accepted records in arrival order, each with "its key was seen before".
    records: Vec<(Value, bool)>,
    keys: HashSet<String>,
    requests: u64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    mode: Mutex<Mode>,
    store: Mutex<Store>,
    server: Mutex<Option<JoinSet<()>>>,
}

impl Receiver {
    pub async fn start() -> Arc<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let rx = Arc::new(Receiver {
            addr: listener.local_addr().expect("addr"),
            mode: Mutex::new(Mode::Accept),
            store: Mutex::new(Store::default()),
            server: Mutex::new(None),
        });
        rx.serve(listener);
        rx
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    pub fn requests(&self) -> u64 {
        self.store.lock().expect("store").requests
    }

    /// Close the listener and every open connection: connections are refused.
    pub fn refuse(&self) {
        if let Some(mut set) = self.server.lock().expect("server").take() {
            set.abort_all();
        }
    }

    /// Listen again on the same port.
    pub fn listen_again(self: &Arc<Self>) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(self.addr)
            .expect("bind the receiver's port again");
        let listener = socket.listen(128).expect("listen");
        self.serve(listener);
    }

    fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let mut set = JoinSet::new();
        let me = self.clone();
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let conns = connections.clone();
        set.spawn(async move {
            // Dropping this task (refuse) drops the connection set too.
            let _keep = conns.clone();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                conns.lock().expect("connections").spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        // Aborting the accept loop must also cut the open connections.
        set.spawn(async move {
            let _guard = AbortOnDrop(connections);
            std::future::pending::<()>().await;
        });
        *self.server.lock().expect("server") = Some(set);
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(Body::new(req.into_body()), 64 << 20).await;
        let Ok(body) = body else {
            return status(StatusCode::BAD_REQUEST);
        };
        let mode = *self.mode.lock().expect("mode");
        self.store.lock().expect("store").requests += 1;
        match mode {
            Mode::Fail => return status(StatusCode::INTERNAL_SERVER_ERROR),
            Mode::Slow(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        {
            let mut store = self.store.lock().expect("store");
            let seen = !store.keys.insert(key);
            for r in v["records"].as_array().cloned().unwrap_or_default() {
                store.records.push((r, seen));
            }
        }
        if let Mode::Hang(d) = mode {
            tokio::time::sleep(d).await;
        }
        status(StatusCode::OK)
    }

    /// Records accepted from request number `from` on (in arrival order),
    /// and where to continue next time.
    pub fn records_since(&self, from: usize) -> (Vec<SinkRecord>, usize) {
        let store = self.store.lock().expect("store");
        let records = store.records[from.min(store.records.len())..]
            .iter()
            .filter_map(|(v, seen)| {
                Some(SinkRecord {
                    partition: v["partition"].as_i64()? as i32,
                    offset: v["offset"].as_i64()?,
                    id: v["value"]["id"].as_u64(),
                    resend_of_seen_key: *seen,
                })
            })
            .collect();
        (records, store.records.len())
    }
}

struct AbortOnDrop(Arc<Mutex<JoinSet<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.abort_all();
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}
