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
use connectivity_protocol::JobSpec;
use connectivity_protocol::batch::BatchWriter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the drain may see nothing new before it is declared stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// The writer's end of the pipe.
type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The reader's thread: the bytes it read, and the time of its last read.
type Reader = JoinHandle<anyhow::Result<(u64, Instant)>>;

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
    let (reader, mut tls) = tls_connection(tls_dir)?;
    let spec = ceiling::job_spec("floor", broker, topic, group);
    let consumer: BaseConsumer =
        ceiling::consumer_config(broker, topic, group, Settings::Agent)?.create()?;
    consumer.subscribe(&[topic])?;
    let cpu0 = ceiling::process_cpu_s();
    let pumped = pump(&consumer, &mut tls, topic, expected, &spec)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(std::net::Shutdown::Write)?;
    let (received, last) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("TLS pipe reader panicked"))??;
    if received != pumped.sent {
        bail!(
            "TLS pipe: {} bytes sent but {received} received",
            pumped.sent
        );
    }
    let secs = pumped
        .first
        .map_or(0.0, |t| last.duration_since(t).as_secs_f64());
    let cpu_s = ceiling::process_cpu_s() - cpu0;
    drop(consumer);
    Ok(Drained {
        records: pumped.records,
        bytes: pumped.bytes,
        secs,
        cpu_s,
    })
}

/// One TLS connection over the loopback, with the agent's and the control
/// plane's TLS settings: the reader's thread, and the writer's end.
fn tls_connection(tls_dir: &Path) -> anyhow::Result<(Reader, TlsClient)> {
    let server_cfg = connectivity_common::tls::server_config(
        &tls_dir.join("server.pem"),
        &tls_dir.join("server-key.pem"),
    )?;
    let client_cfg = connectivity_common::tls::client_config(Some(&tls_dir.join("ca.pem")))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || read_all(&listener, server_cfg));
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(client_cfg, ServerName::try_from("127.0.0.1")?)?;
    Ok((reader, rustls::StreamOwned::new(conn, tcp)))
}

/// The reader: decrypt everything, keep nothing; the bytes read and the
/// time of its last read.
fn read_all(
    listener: &TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> anyhow::Result<(u64, Instant)> {
    let (tcp, _) = listener.accept()?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(cfg)?;
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
}

/// What the pump consumed, and the frame bytes it wrote.
struct Pumped {
    records: u64,
    bytes: u64,
    sent: u64,
    first: Option<Instant>,
}

/// Consume `expected` records into batch frames sealed at the job's
/// `max_records` or `max_bytes`, as the agent does, and write each frame
/// to `tls`.
fn pump(
    consumer: &BaseConsumer,
    tls: &mut TlsClient,
    topic: &str,
    expected: u64,
    spec: &JobSpec,
) -> anyhow::Result<Pumped> {
    let (max_records, max_bytes) = (spec.max_records, spec.max_bytes as usize);
    let mut p = Pumped {
        records: 0,
        bytes: 0,
        sent: 0,
        first: None,
    };
    let mut seq = 0u64;
    let mut last_progress = Instant::now();
    let mut writer = BatchWriter::new("floor", seq, topic, max_bytes);
    while p.records < expected {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => bail!("TLS pipe consumer: {e}"),
            None if last_progress.elapsed() > PATIENCE => {
                bail!(
                    "TLS pipe consumer stuck at {} of {expected} records",
                    p.records
                )
            }
            None => continue,
        };
        p.first.get_or_insert_with(Instant::now);
        p.records += 1;
        p.bytes += m.payload_len() as u64;
        push(&mut writer, &m);
        if writer.len() >= max_records || writer.encoded_len() >= max_bytes {
            seq += 1;
            p.sent += send_and_reuse(&mut writer, tls, seq, topic)?;
        }
        last_progress = Instant::now();
    }
    if !writer.is_empty() {
        let frame = writer.finish();
        tls.write_all(&frame)?;
        p.sent += frame.len() as u64;
    }
    Ok(p)
}

/// Append one record to the frame, headers included.
fn push(writer: &mut BatchWriter, m: &BorrowedMessage<'_>) {
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
}

/// Write the frame, then start frame `seq` in its buffer (as the agent
/// does); the bytes written.
fn send_and_reuse(
    writer: &mut BatchWriter,
    tls: &mut TlsClient,
    seq: u64,
    topic: &str,
) -> anyhow::Result<u64> {
    let next = BatchWriter::new("floor", seq, topic, 0);
    let frame = std::mem::replace(writer, next).finish();
    tls.write_all(&frame)?;
    let sent = frame.len() as u64;
    let buf = frame.try_into_mut().unwrap_or_default();
    *writer = BatchWriter::with_buffer(buf, "floor", seq, topic);
    Ok(sent)
}
