//! A TCP proxy that delays every byte by a fixed time in each direction: the
//! "distance" between the agent and the control plane; optionally it also
//! limits the bandwidth, as a link off the loopback would.
//!
//! Each direction is a delay line: what is read at `t` is written at
//! `t + delay`, however much is in flight, so the delay alone adds latency
//! without limiting bandwidth. With a rate, a chunk also waits until the
//! link has sent the chunks before it (`len / rate` each), and the line
//! holds few chunks, so a sender faster than the link meets TCP
//! back-pressure, as it would at a real bottleneck. The TLS inside passes through untouched. Unlike
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

/// Chunks queued per direction on a rate-limited link: at most 4 MiB, the
/// buffer of a router in front of a slow link rather than a delay line.
const LIMITED_CHUNKS: usize = 64;

/// What the proxy does to the bytes it forwards, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub one_way: Duration,
    /// Bytes per second per direction; `None`: as fast as the loopback.
    pub bytes_per_s: Option<u64>,
}

impl Link {
    pub fn delay(one_way: Duration) -> Link {
        Link {
            one_way,
            bytes_per_s: None,
        }
    }
}

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
/// adding `link.one_way` in each direction (so twice that to a round trip)
/// and limiting each direction to `link.bytes_per_s`.
pub async fn start(upstream: SocketAddr, link: Link) -> anyhow::Result<DelayProxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        while let Some(client) = accept(&listener, &s).await {
            tokio::spawn(forward(client, upstream, link, s.clone()));
        }
    });
    Ok(DelayProxy { addr, stop })
}

/// The next connection (failed accepts are skipped), or `None` once the
/// proxy stops.
async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<TcpStream> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            a = listener.accept() => if let Ok((client, _)) = a {
                return Some(client);
            },
        }
    }
}

/// One connection: `client` to `upstream` and back, each way through a
/// delay line, until either side closes or the proxy stops.
async fn forward(client: TcpStream, upstream: SocketAddr, link: Link, stop: CancellationToken) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async { tokio::join!(delay_line(cr, sw, link), delay_line(sr, cw, link)) } => {}
    }
}

/// Copy `from` to `to`, each chunk `link.one_way` after it was read and
/// after the link has sent the chunks before it.
async fn delay_line(from: OwnedReadHalf, to: OwnedWriteHalf, link: Link) {
    let chunks = match link.bytes_per_s {
        Some(_) => LIMITED_CHUNKS,
        None => LINE_CHUNKS,
    };
    let (tx, rx) = mpsc::channel::<(Instant, Bytes)>(chunks);
    tokio::join!(
        read_into_line(from, tx, link.one_way),
        write_from_line(rx, to, link)
    );
}

/// Put each chunk read on the line with the time it is due out.
async fn read_into_line(
    mut from: OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Bytes)>,
    delay: Duration,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = (Instant::now() + delay, Bytes::copy_from_slice(&buf[..n]));
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    // Dropping `tx` lets the writer finish what is in the line, then
    // pass the end of stream on.
}

/// Write each chunk of the line when it is due (and, on a limited link,
/// once the link has sent it), then pass the end of stream on.
async fn write_from_line(
    mut rx: mpsc::Receiver<(Instant, Bytes)>,
    mut to: OwnedWriteHalf,
    link: Link,
) {
    let delay = link.one_way;
    // When the link has finished sending what it was given.
    let mut link_free = Instant::now();
    while let Some((mut due, chunk)) = rx.recv().await {
        if let Some(rate) = link.bytes_per_s {
            // The chunk leaves the link once the link is free and has
            // taken the time to send it; then it travels `delay`.
            let send = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
            link_free = link_free.max(due - delay) + send;
            due = link_free + delay;
        }
        if !delay.is_zero() || link.bytes_per_s.is_some() {
            // (Without either, the proxy is a plain forwarder: the baseline.)
            tokio::time::sleep_until(due).await;
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Checks run under `cargo test`: a round trip through the proxy takes
/// twice the one-way delay, bytes arrive intact, and a rate-limited link
/// takes `bytes / rate` to carry them.
pub async fn self_check() -> anyhow::Result<()> {
    delay_check().await?;
    rate_check().await
}

async fn delay_check() -> anyhow::Result<()> {
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
    let proxy = start(echo_addr, Link::delay(Duration::from_millis(20))).await?;
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

async fn rate_check() -> anyhow::Result<()> {
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let received = tokio::spawn(async move {
        let (mut s, _) = sink.accept().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    });
    // 2 MiB at 8 MiB/s: a quarter of a second, plus 5 ms of delay.
    let link = Link {
        one_way: Duration::from_millis(5),
        bytes_per_s: Some(8 * 1024 * 1024),
    };
    let proxy = start(sink_addr, link).await?;
    let sent: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let mut c = TcpStream::connect(proxy.addr).await?;
    c.write_all(&sent).await?;
    c.shutdown().await?;
    let got = received.await??;
    let took = t.elapsed();
    anyhow::ensure!(got == sent, "the rate-limited link changed the bytes");
    anyhow::ensure!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "2 MiB over an 8 MiB/s link took {took:?}, expected about 255 ms"
    );
    Ok(())
}
