//! Logging setup shared by both binaries: `tracing` to stderr (the journal
//! under systemd), level from the config or `RUST_LOG`, changeable at run time.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The last log lines, for the diagnostics bundle. Bounded.
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const RECENT_LINES: usize = 200;

/// A writer that keeps each formatted line in [`RECENT`] as well as
/// writing it to stderr.
struct TeeWriter;

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut recent) = RECENT.lock() {
            let line = String::from_utf8_lossy(buf).trim_end().to_owned();
            if recent.len() == RECENT_LINES {
                recent.pop_front();
            }
            recent.push_back(line);
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The most recent log lines, oldest first.
pub fn recent_lines() -> Vec<String> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

fn filter(level: &str) -> EnvFilter {
    // Our crate at `level`; librdkafka's own chatter one step quieter.
    EnvFilter::try_new(format!(
        "{level},rdkafka=warn,librdkafka=warn,hyper=info,rustls=info,tungstenite=info"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Start logging at `level` (error, warn, info, debug, trace) unless
/// `RUST_LOG` says otherwise. Calling it twice is harmless.
pub fn init(level: &str) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let (layer, handle) = reload::Layer::new(env.unwrap_or_else(|| filter(level)));
    // Under systemd the journal adds its own timestamps.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = fmt::layer()
        .with_writer(|| TeeWriter)
        .with_ansi(false)
        .with_target(false);
    let ok = if under_journal {
        tracing_subscriber::registry()
            .with(layer)
            .with(fmt.without_time())
            .try_init()
            .is_ok()
    } else {
        tracing_subscriber::registry()
            .with(layer)
            .with(fmt)
            .try_init()
            .is_ok()
    };
    if ok {
        let _ = RELOAD.set(handle);
    }
}

/// Change the log level of a running process. Returns an error naming the
/// accepted levels when `level` is not one of them.
pub fn set_level(level: &str) -> Result<(), String> {
    let level = level.to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        return Err(format!(
            "{level:?} is not a log level; use error, warn, info, debug or trace"
        ));
    }
    let handle = RELOAD.get().ok_or("logging is not initialised")?;
    handle.reload(filter(&level)).map_err(|e| e.to_string())
}
