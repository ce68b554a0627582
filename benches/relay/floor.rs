//! The floor of any relay over TLS: a bare rdkafka consumer with the agent's
//! consumer settings copies every record into a batch frame (the agent's
//! encoding, `protocol::batch`) and writes the frames over one TLS
//! connection (the agent's TLS settings, `tls::client_config`) to a reader
//! in this process that decrypts them and drops them.
//!
//! What it leaves out is everything a relay could in principle optimise
//! away: WebSocket framing and masking, acks, the window, offset commits,
//! the control plane's duplicate filter and watermarks, the sink. What it
//! keeps is what no relay over TLS on the same machine can avoid: consume,
//! copy into a frame, encrypt, send over TCP, receive, decrypt. So "floor /
//! rdkafka" is the best ratio any relay could reach on this machine, and
//! "relay / floor" is how much of the rest is the relay's own cost.

use crate::broker::Broker;
use crate::ceiling::{self, Drained, Settings};
use anyhow::{Context, bail};
use connectivity_protocol::batch::BatchWriter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the drain may see nothing new before it is declared stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// Drain `expected` records of `topic` through a TLS pipe. `tls_dir` holds
/// `ca.pem`, `server.pem` and `server-key.pem` (the bench's control plane
/// certificates). Blocking.
pub fn tls_pipe(
    broker: &Broker,
    topic: &str,
    group: &str,
    expected: u64,
    tls_dir: &Path,
) -> anyhow::Result<Drained> {
    let server_cfg = connectivity_common::tls::server_config(
        &tls_dir.join("server.pem"),
        &tls_dir.join("server-key.pem"),
    )?;
    let client_cfg = connectivity_common::tls::client_config(Some(&tls_dir.join("ca.pem")))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // The reader: decrypt everything, keep nothing; the time of its last read.
    let reader = std::thread::spawn(move || -> anyhow::Result<(u64, Instant)> {
        let (tcp, _) = listener.accept()?;
        tcp.set_nodelay(true)?;
        let conn = rustls::ServerConnection::new(server_cfg)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = vec![0u8; 256 * 1024];
        let (mut total, mut last) = (0u64, Instant::now());
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    std::hint::black_box(buf[n - 1]);
                    total += n as u64;
                    last = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e).context("TLS pipe reader"),
            }
        }
        Ok((total, last))
    });

    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(client_cfg, ServerName::try_from("127.0.0.1")?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    let spec = ceiling::job_spec("floor", broker, topic, group);
    let (max_records, max_bytes) = (spec.max_records, spec.max_bytes as usize);
    let consumer: BaseConsumer =
        ceiling::consumer_config(broker, topic, group, Settings::Agent)?.create()?;
    consumer.subscribe(&[topic])?;
    let cpu0 = ceiling::process_cpu_s();
    let (mut records, mut bytes, mut seq, mut sent) = (0u64, 0u64, 0u64, 0u64);
    let mut first = None;
    let mut last_progress = Instant::now();
    let mut writer = BatchWriter::new("floor", seq, topic, max_bytes);
    while records < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                records += 1;
                bytes += m.payload_len() as u64;
                let headers = m.headers();
                writer.push(
                    m.partition(),
                    m.offset(),
                    m.timestamp().to_millis(),
                    m.key(),
                    m.payload(),
                    headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .map(|h| (h.key, h.value)),
                );
                if writer.len() >= max_records || writer.encoded_len() >= max_bytes {
                    // Send, then reuse the buffer (as the agent does).
                    seq += 1;
                    let next = BatchWriter::new("floor", seq, topic, 0);
                    let frame = std::mem::replace(&mut writer, next).finish();
                    tls.write_all(&frame)?;
                    sent += frame.len() as u64;
                    let buf = frame.try_into_mut().unwrap_or_default();
                    writer = BatchWriter::with_buffer(buf, "floor", seq, topic);
                }
                last_progress = Instant::now();
            }
            Some(Err(e)) => bail!("TLS pipe consumer: {e}"),
            None if last_progress.elapsed() > PATIENCE => {
                bail!("TLS pipe consumer stuck at {records} of {expected} records")
            }
            None => {}
        }
    }
    if !writer.is_empty() {
        let frame = writer.finish();
        tls.write_all(&frame)?;
        sent += frame.len() as u64;
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(std::net::Shutdown::Write)?;
    let (received, last) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("TLS pipe reader panicked"))??;
    if received != sent {
        bail!("TLS pipe: {sent} bytes sent but {received} received");
    }
    let secs = first.map_or(0.0, |t| last.duration_since(t).as_secs_f64());
    let cpu_s = ceiling::process_cpu_s() - cpu0;
    drop(consumer);
    Ok(Drained {
        records,
        bytes,
        secs,
        cpu_s,
    })
}
