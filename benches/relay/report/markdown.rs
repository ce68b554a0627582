//! The report as Markdown: one function per section, in the order they
//! appear, and one per table row where a row takes more than a line.

use super::*;
use std::fmt::Write;

impl Results {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        self.machine_md(&mut s);
        self.throughput_md(&mut s);
        self.distance_md(&mut s);
        self.compression_md(&mut s);
        self.sinks_md(&mut s);
        self.latency_md(&mut s);
        self.resources_md(&mut s);
        self.targets_md(&mut s);
        self.notes_md(&mut s);
        self.every_run_md(&mut s);
        s
    }

    fn machine_md(&self, s: &mut String) {
        let m = &self.machine;
        let _ = writeln!(s, "### Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} × {} |", m.nproc, m.cpu_model);
        let _ = writeln!(s, "| memory | {:.1} GiB |", m.memory_gib);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(
            s,
            "| load average (1, 5, 15 min) | start {}, end {} |",
            m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            s,
            "| toolchain | {}, build profile `{}` |",
            m.rustc, m.profile
        );
        let _ = writeln!(
            s,
            "| librdkafka | {} (agent and bare consumer); kcat: {} |",
            m.librdkafka, m.kcat
        );
        let _ = writeln!(s, "| command | `{}` |\n", self.command);
    }

    fn throughput_md(&self, s: &mut String) {
        let _ = writeln!(s, "### Throughput: draining a filled topic\n");
        let _ = writeln!(
            s,
            "Records per second from the first record out to the last. Relay rows count only records the control plane's sink \
             accepted (each batch acked); after the last ack the run waits until the agent's consumer group has committed the end \
             of every partition (\"commit +s\"). Ratio = relay / bare rdkafka consumer (the best of its runs, with librdkafka's default settings or the agent's) in the same run. \
             The floor is the bare consumer (agent's settings) writing the agent's batch frames over one TLS connection to a reader that decrypts and drops them: \
             no WebSocket, acks, commits or sink, only what no relay over TLS can avoid, so floor / rdkafka is the best ratio any such relay could reach on this machine.\n"
        );
        let _ = writeln!(
            s,
            "| record | partitions | records | rdkafka | kcat | rdkafka, agent settings | floor (TLS pipe) | ratio | relay -> discard | ratio | relay / floor | relay -> jsonl | ratio | commit +s | agent CPU s / M rec | agent peak RSS MiB |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (size, p) in self.topics() {
            self.throughput_row(s, size, p);
        }
    }

    /// One topic: every consumer's best run, the ratios, the relay's costs.
    fn throughput_row(&self, s: &mut String, size: usize, p: i32) {
        let ceil = self.ceiling(size, p);
        let rate = |c: &str| self.best(size, p, c).map(|r| r.rec_per_s);
        let ratio = |c: &str| match (rate(c), ceil) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", a / b * 100.0),
            _ => "-".into(),
        };
        let relay = self.best(size, p, RELAY_DISCARD);
        let records = self
            .runs_of(size, p, RDKAFKA)
            .first()
            .map_or(0, |r| r.records);
        let _ = writeln!(
            s,
            "| {} | {p} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
            size_name(size),
            f0(records as f64),
            rate(RDKAFKA).map_or("-".into(), f0),
            rate(KCAT).map_or("-".into(), f0),
            rate(RDKAFKA_AGENT).map_or("-".into(), f0),
            rate(FLOOR).map_or("-".into(), f0),
            ratio(FLOOR),
            rate(RELAY_DISCARD).map_or("-".into(), f0),
            ratio(RELAY_DISCARD),
            match (rate(RELAY_DISCARD), rate(FLOOR)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", a / b * 100.0),
                _ => "-".into(),
            },
            rate(RELAY_JSONL).map_or("-".into(), f0),
            ratio(RELAY_JSONL),
            opt(relay.and_then(|r| r.commit_after_s), 2),
            opt(relay.and_then(|r| r.cpu_s_per_m), 2),
            opt(relay.and_then(|r| r.peak_rss_mib), 1),
        );
    }

    fn distance_md(&self, s: &mut String) {
        let distance = self.distance();
        if distance.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### Distance: 50 ms round trip between agent and control plane\n"
        );
        let _ = writeln!(
            s,
            "A delaying TCP proxy in the bench adds 25 ms each way. All runs drain the same (smaller) topic with the job's \
                 default in-flight window: once connected directly, then alternately through the proxy without delay and with it \
                 (the median of each is shown). The proxy copies every byte in the bench process, on the same two cores, so the \
                 ratio is taken over the same path without the delay: it measures what the distance costs, not what the proxy \
                 costs. The ratio over the direct connection is shown too.\n"
        );
        let _ = writeln!(
            s,
            "| record | partitions | relay, direct | relay, through the proxy, no delay | relay, +50 ms RTT | ratio | ratio to direct |\n|---|---|---|---|---|---|---|"
        );
        for d in distance {
            distance_row(s, &d);
        }
    }

    fn compression_md(&self, s: &mut String) {
        let compression = compression_of(&self.runs);
        if compression.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### Compression: none, lz4, zstd, on the loopback and over a limited link\n"
        );
        let _ = writeln!(
            s,
            "Each job compresses its batch frames with the codec shown (`compression` in the job spec). Two topics per payload: \
                 the pad of every record holds random words (text) or random base64 characters (what encrypted or compressed \
                 values look like). \"loopback\": the agent connected directly. \"limited link\": through the bench's proxy, \
                 limited to {} Mbit/s each way with {} ms round trip, a site's uplink to a cloud region. Medians of the runs; \
                 \"vs none\" is over the same payload and link without compression. Sent / raw: bytes of batch frames sent over \
                 their bytes before compression, from the agent's job state. Agent CPU: over the agent's whole life, start-up included \
                 (ahead of a slow link it compresses most records before the first one arrives); control plane CPU: the bench \
                 process, which also runs the proxy on the limited link.\n",
            LINK_BYTES_PER_S * 8 / 1_000_000,
            2 * LINK_ONE_WAY_MS
        );
        let _ = writeln!(
            s,
            "| record | partitions | payload | link | compression | runs | records/s | vs none | sent / raw | bytes sent per record | agent CPU s / M rec | control plane CPU s / M rec | agent peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &compression {
            compression_row_md(s, r, &compression);
        }
    }

    /// The relay into each sink, side by side on one topic.
    fn sinks_md(&self, s: &mut String) {
        let topics = part_topics(&self.runs, SINKS);
        if topics.is_empty() {
            return;
        }
        let _ = writeln!(s, "\n### Sinks: the relay into each sink\n");
        let _ = writeln!(
            s,
            "The same topic drained by the relay into each sink in turn, one after the other in this run: discard, JSONL \
                 (`fsync` per batch, the default), and a webhook to a minimal HTTP/1.1 receiver in the bench process that reads \
                 each body and drops it (keep-alive; the sink's defaults: one POST per partition of a batch, 4 in flight; then \
                 batches of up to 8 MiB; then a POST per record, on a topic of its own). \"vs discard\": records/s over the \
                 relay into the discard sink of the same topic. Control plane CPU and peak RSS: the bench process's (control \
                 plane, meter and receiver; CPU from the first record out to the last, RSS an upper bound), except for \
                 \"control plane as its own process\": the `control-plane` binary's alone (CPU from the sink file's first \
                 growth to its last, peak RSS over its whole life).\n"
        );
        let _ = writeln!(
            s,
            "| record | partitions | sink | records | records/s | vs discard | agent CPU s / M rec | control plane CPU s / M rec | control plane / agent CPU | agent peak RSS MiB | control plane peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (size, p) in topics {
            let discard = self
                .part_runs(SINKS, size, p, RELAY_DISCARD)
                .first()
                .map(|r| r.rec_per_s);
            for r in self
                .runs
                .iter()
                .filter(|r| r.part == SINKS && r.size == size && r.partitions == p)
            {
                sinks_row(s, r, discard);
            }
        }
        self.peer_md(s);
    }

    /// The relay beside MirrorMaker 2 on the same topics.
    fn peer_md(&self, s: &mut String) {
        let topics = part_topics(&self.runs, SINKS);
        let mut rows = Vec::new();
        for (size, p) in topics {
            let Some(mm) = self
                .part_runs(SINKS, size, p, MIRROR_MAKER)
                .first()
                .copied()
            else {
                continue;
            };
            for name in [
                RELAY_DISCARD,
                RELAY_JSONL,
                RELAY_WEBHOOK,
                RELAY_JSONL_PROCESS,
            ] {
                if let Some(r) = self.part_runs(SINKS, size, p, name).first() {
                    rows.push(peer_row(r, mm));
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nBeside MirrorMaker 2 (its JVM's CPU and peak RSS; for the relay the agent's and the control plane's, as in the table above: the bench process's, an upper bound, or the binary's alone when it runs as its own process):\n"
        );
        let _ = writeln!(
            s,
            "| record | partitions | relay | records/s / MM2's | CPU s / M rec, agent + control plane / MM2's | agent peak RSS / MM2's | agent + control plane peak RSS / MM2's |\n|---|---|---|---|---|---|---|"
        );
        for row in rows {
            let _ = writeln!(s, "{row}");
        }
    }

    fn latency_md(&self, s: &mut String) {
        if self.latency.is_empty() {
            return;
        }
        let _ = writeln!(s, "\n### Latency: produce to sink at a fixed rate\n");
        let _ = writeln!(
            s,
            "Each record carries the time `produce()` was called (µs); latency is taken when the sink accepted the batch \
                 (relay: the discard sink, or the bench's webhook receiver for \"relay -> webhook\") or when the bare consumer got the record. Producer: `linger.ms={}` (librdkafka's default), \
                 part of what is measured for both. The broker stamps each record with its append time (`LogAppendTime`): \"to log p99\" is the \
                 p99 of produce to the broker's log alone. \"Over {} ms\": records slower than the target; \"mostly before the log\": those \
                 of them that spent more than half of their time before the broker appended them; \"in a broker pause\": those of them \
                 in flight (between produce and arrival) while the broker's JVM was stopped for garbage collection, from its GC log \
                 (a lower bound of what the pauses explain: records produced just after a pause wait behind its backlog too); \
                 \"broker GC pauses\": the pauses within the run, their longest and their sum.\n",
            crate::paced::PRODUCER_LINGER_MS,
            crate::gc::TARGET_MS
        );
        let _ = writeln!(
            s,
            "| rate /s | achieved /s | record | partitions | consumer | samples | p50 ms | p99 ms | max ms | to log p99 ms | over {} ms | mostly before the log | in a broker pause | broker GC pauses (longest, sum ms) | agent CPU % of a core | agent peak RSS MiB |",
            crate::gc::TARGET_MS
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for l in &self.latency {
            latency_row(s, l);
        }
    }

    /// The idle agent and the long run, as a list.
    fn resources_md(&self, s: &mut String) {
        if !self.idle.is_empty() || self.soak.is_some() {
            let _ = writeln!(s, "\n### Resources\n");
        }
        for i in &self.idle {
            let _ = writeln!(
                s,
                "- Idle agent (job assigned, {} partitions, nothing to read) over {:.0} s: **{:.2}% of a core**, RSS {:.1} MiB, \
                 at most {:.2} requests/s to the broker (TCP segments with data, all requests counted: fetches, heartbeats, commits); \
                 one fetch covers every partition on the broker, so at most that many reads per partition per second.",
                i.partitions, i.secs, i.cpu_pct_of_core, i.rss_mib, i.requests_per_s_max
            );
        }
        if let Some(k) = &self.soak {
            let _ = writeln!(
                s,
                "- Long run: {} records/s of {} on {} partitions for {:.0} s ({} records relayed): RSS after the first minute {:.1} MiB, \
                 at the end {:.1} MiB, peak (VmHWM) **{:.1} MiB**, trend {:+.2} MiB per 10 min after the first minute and {:+.2} MiB per 10 min \
                 over the second half; {:.2} CPU s per million records.",
                f0(k.rate as f64),
                size_name(k.size),
                k.partitions,
                k.secs,
                f0(k.records as f64),
                k.rss_after_1min_mib,
                k.rss_end_mib,
                k.hwm_mib,
                k.slope_mib_per_10min,
                k.slope_second_half_mib_per_10min,
                k.cpu_s_per_m
            );
        }
    }

    fn targets_md(&self, s: &mut String) {
        let _ = writeln!(s, "\n### Targets\n");
        let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
        for (t, measured, met) in self.targets() {
            let _ = writeln!(
                s,
                "| {t} | {measured} | {} |",
                match met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                }
            );
        }
    }

    fn notes_md(&self, s: &mut String) {
        if self.notes.is_empty() {
            return;
        }
        let _ = writeln!(s, "\n### Notes\n");
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
    }

    /// Every run, folded away: the numbers the tables above are made of.
    fn every_run_md(&self, s: &mut String) {
        let _ = writeln!(s, "\n<details><summary>Every run</summary>\n");
        let _ = writeln!(
            s,
            "| part | record | partitions | consumer | records | s | rec/s | MiB/s | consumer CPU s | control plane CPU s | broker CPU s | commit +s | stop s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            every_run_row(s, r);
        }
        let _ = writeln!(s, "\n</details>");
    }
}

fn distance_row(s: &mut String, d: &Distance) {
    let pct = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | **{}** | {} |",
        size_name(d.size),
        d.partitions,
        d.direct.map_or("-".into(), f0),
        d.proxied.map_or("-".into(), f0),
        f0(d.delayed),
        pct(d.ratio()),
        pct(d.direct.filter(|b| *b > 0.0).map(|b| d.delayed / b)),
    );
}

/// One compression row; "vs none" is over the row of the same topic,
/// payload and link without compression.
fn compression_row_md(s: &mut String, r: &CompressionRow, compression: &[CompressionRow]) {
    let none = compression.iter().find(|n| {
        (
            n.size,
            n.partitions,
            &n.payload,
            &n.consumer,
            n.codec.as_str(),
        ) == (r.size, r.partitions, &r.payload, &r.consumer, "none")
    });
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        size_name(r.size),
        r.partitions,
        r.payload,
        if r.consumer == RELAY_DISCARD_LINK {
            "limited"
        } else {
            "loopback"
        },
        r.codec,
        r.runs,
        f0(r.rec_per_s),
        none.filter(|n| n.rec_per_s > 0.0)
            .map_or("-".into(), |n| format!(
                "**{:.0}%**",
                r.rec_per_s / n.rec_per_s * 100.0
            )),
        r.sent_per_raw
            .map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
        opt(r.sent_per_record, 0),
        opt(r.agent_cpu_per_m, 2),
        opt(r.cp_cpu_per_m, 2),
        opt(r.peak_rss_mib, 1),
    );
}

fn sinks_row(s: &mut String, r: &Run, discard: Option<f64>) {
    let per_m = r.records as f64 / 1e6;
    let cp = r.cp_cpu_s.map(|c| c / per_m);
    let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        size_name(r.size),
        r.partitions,
        r.consumer,
        f0(r.records as f64),
        f0(r.rec_per_s),
        discard.map_or("-".into(), |d| format!(
            "**{:.0}%**",
            r.rec_per_s / d * 100.0
        )),
        opt(r.cpu_s_per_m, 2),
        opt(cp, 2),
        match (cp, r.cpu_s_per_m) {
            (Some(c), Some(a)) if a > 0.0 => format!("{:.2}", c / a),
            _ => "-".into(),
        },
        opt(r.peak_rss_mib, 1),
        opt(r.cp_peak_rss_mib, 1),
    );
}

fn peer_row(r: &Run, mm: &Run) -> String {
    let per_m = r.records as f64 / 1e6;
    let cpu = r
        .cpu_s_per_m
        .map(|a| a + r.cp_cpu_s.map_or(0.0, |c| c / per_m));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    format!(
        "| {} | {} | {} | **{:.2}** | {} | {} | {} |",
        size_name(r.size),
        r.partitions,
        r.consumer,
        r.rec_per_s / mm.rec_per_s,
        ratio(cpu, mm.cpu_s_per_m),
        ratio(r.peak_rss_mib, mm.peak_rss_mib),
        ratio(
            r.peak_rss_mib.zip(r.cp_peak_rss_mib).map(|(a, c)| a + c),
            mm.peak_rss_mib
        ),
    )
}

fn latency_row(s: &mut String, l: &LatencyRun) {
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {:.1} | **{:.1}** | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
        f0(l.rate as f64),
        f0(l.achieved_rate),
        size_name(l.size),
        l.partitions,
        l.consumer,
        f0(l.latency.samples as f64),
        l.latency.p50_ms,
        l.latency.p99_ms,
        l.latency.max_ms,
        opt(l.tail.and_then(|t| t.to_log_p99_ms), 1),
        l.tail.map_or("-".into(), |t| f0(t.over_target as f64)),
        l.tail
            .map_or("-".into(), |t| f0(t.over_target_mostly_to_log as f64)),
        l.tail
            .map_or("-".into(), |t| f0(t.over_target_in_pause as f64)),
        l.tail.map_or("-".into(), |t| format!(
            "{} ({:.1}, {:.0})",
            t.pauses, t.longest_pause_ms, t.paused_ms
        )),
        opt(l.agent_cpu_pct, 1),
        opt(l.agent_peak_rss_mib, 1),
    );
}

fn every_run_row(s: &mut String, r: &Run) {
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} |",
        r.part,
        size_name(r.size),
        r.partitions,
        if r.part == COMPRESSION {
            format!(
                "{} ({}, {})",
                r.consumer,
                r.compression.as_deref().unwrap_or("none"),
                r.payload.as_deref().unwrap_or("-")
            )
        } else {
            r.consumer.clone()
        },
        f0(r.records as f64),
        r.secs,
        f0(r.rec_per_s),
        r.mib_per_s,
        opt(r.consumer_cpu_s, 2),
        opt(r.cp_cpu_s, 2),
        opt(r.broker_cpu_s, 2),
        opt(r.commit_after_s, 2),
        opt(r.stop_s, 2)
    );
}
