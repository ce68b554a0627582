//! The webhook receiver of the sink runs: a minimal hyper HTTP/1.1 server
//! in this process that reads each POST's body, drops it and answers 200
//! with keep-alive, so that what is measured is the control plane's side of
//! the webhook, not a receiver's work.

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// What the receiver got since it started.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Received>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listen on 127.0.0.1:0.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received::default());
        let stop = CancellationToken::new();
        let (r, s) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let _ = tcp.set_nodelay(true);
                r.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(tcp, r.clone(), s.clone()));
            }
        });
        Ok(Receiver {
            addr,
            received,
            stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One connection: every request's body read and dropped, 200 with no body.
async fn serve(tcp: tokio::net::TcpStream, received: Arc<Received>, stop: CancellationToken) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let received = received.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(data) = frame?.into_data() {
                    n += data.len() as u64;
                }
            }
            received.requests.fetch_add(1, Ordering::Relaxed);
            received.bytes.fetch_add(n, Ordering::Relaxed);
            Ok::<_, hyper::Error>(Response::new(String::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tcp), svc);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = conn => {}
    }
}
