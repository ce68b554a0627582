//! A TCP proxy that delays every byte by a fixed time in each direction: the
//! "distance" between the agent and the control plane.
//!
//! Each direction is a delay line: what is read at `t` is written at
//! `t + delay`, however much is in flight, so the proxy adds latency without
//! limiting bandwidth. The TLS inside passes through untouched. Unlike
//! `tc netem` it needs no privileges and no network namespace, but the TCP
//! connections on either side of it see loopback round trips: it models the
//! application-level round trip (batch out, ack back), which is what the
//! relay's in-flight window has to cover, not TCP's own window growth.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks in flight per direction; at 64 KiB each, far more than
/// bandwidth x delay on loopback.
const LINE_CHUNKS: usize = 4096;

/// A running proxy; stops when its token is cancelled.
pub struct DelayProxy {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Listen on 127.0.0.1:0 and forward every connection to `upstream`,
/// adding `one_way` in each direction (so `2 * one_way` to a round trip).
pub async fn start(upstream: SocketAddr, one_way: Duration) -> anyhow::Result<DelayProxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                _ = s.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let s = s.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::select! {
                    _ = s.cancelled() => {}
                    _ = async { tokio::join!(delay_line(cr, sw, one_way), delay_line(sr, cw, one_way)) } => {}
                }
            });
        }
    });
    Ok(DelayProxy { addr, stop })
}

/// Copy `from` to `to`, each chunk `delay` after it was read.
async fn delay_line(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(LINE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` lets the writer finish what is in the line, then
        // pass the end of stream on.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if !delay.is_zero() {
                // (Without delay, the proxy is a plain forwarder: the baseline.)
                tokio::time::sleep_until(due).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Checks run under `cargo test`: a round trip through the proxy takes
/// twice the one-way delay, and bytes arrive intact.
pub async fn self_check() -> anyhow::Result<()> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        if let Ok((mut s, _)) = echo.accept().await {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    let proxy = start(echo_addr, Duration::from_millis(20)).await?;
    let mut c = TcpStream::connect(proxy.addr).await?;
    let t = Instant::now();
    c.write_all(b"ping").await?;
    let mut got = [0u8; 4];
    c.read_exact(&mut got).await?;
    let rtt = t.elapsed();
    anyhow::ensure!(&got == b"ping", "proxy changed the bytes: {got:?}");
    anyhow::ensure!(
        rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(400),
        "round trip through the proxy took {rtt:?}, expected about 40 ms"
    );
    Ok(())
}
