//! What the operating system says about a process and the machine: CPU
//! seconds and memory from `/proc`, TCP segments from `ss`, and the machine
//! facts every report starts with.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::sync::OnceLock;

/// One look at a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub hwm_kib: u64,
}

/// `CLK_TCK`: the unit of CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `pid` may be `"self"`.
pub fn sample(pid: &str) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample {
        cpu_s: ticks / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// Reset `pid`'s peak RSS (`VmHWM`) to its RSS now (Linux's `clear_refs`
/// value 5), so a later [`sample`] gives the peak since. Best effort: a
/// kernel without it leaves the lifetime peak, which only overstates.
pub fn reset_peak_rss(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// TCP segments carrying data that `pid` sent to `port` (all its sockets),
/// from `ss -tinp`. Each Kafka request the agent sends while idle is one
/// small segment, so the difference between two readings bounds the number
/// of requests from above.
pub fn data_segments_to(pid: u32, port: u16) -> anyhow::Result<u64> {
    let out = Command::new("ss")
        .args([
            "-tinpH",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .context("running ss (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Each socket is a line with the addresses and users:(...), followed by
    // an indented line with the TCP info.
    let needle = format!("pid={pid},");
    let mut total = 0;
    let mut mine = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) || line.contains("users:(") {
            mine = line.contains(&needle);
        }
        if mine
            && let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("data_segs_out:"))
        {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Facts about the machine, printed with every result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub rustc: String,
    pub librdkafka: String,
    pub kcat: String,
    pub profile: String,
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| format!("{cmd} not found"))
}

impl Machine {
    pub fn now(profile: &str) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kcat = first_line("kcat", &["-V"]);
        let kcat_version = Command::new("kcat")
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.starts_with("Version"))
                    .map(str::to_owned)
            })
            .unwrap_or(kcat);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            kernel: first_line("uname", &["-sr"]),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            rustc: first_line("rustc", &["--version"]),
            librdkafka: rdkafka::util::get_rdkafka_version().1,
            kcat: kcat_version,
            profile: profile.to_owned(),
        }
    }
}
