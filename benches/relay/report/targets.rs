//! The targets of the issue, each judged against the results: what was
//! measured, and whether it meets the target (`None`: not measured).

use super::*;

/// One target: (what it asks, what was measured, met).
type Target = (String, String, Option<bool>);

impl Results {
    /// (target, measured, met) for every target of the issue.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = vec![
            self.throughput_target(1024, 0.80),
            self.throughput_target(100, 0.60),
            self.distance_target(),
            self.latency_target(),
            self.peak_rss_target(),
            self.flat_rss_target(),
        ];
        t.extend(self.idle_targets());
        t
    }

    /// The relay's best run at `size` over the ceiling, on every partition
    /// count, at least `floor`.
    fn throughput_target(&self, size: usize, floor: f64) -> Target {
        let ratios: Vec<(i32, f64)> = self
            .topics()
            .into_iter()
            .filter(|(z, _)| *z == size)
            .filter_map(|(z, p)| {
                Some((
                    p,
                    self.best(z, p, RELAY_DISCARD)?.rec_per_s / self.ceiling(z, p)?,
                ))
            })
            .collect();
        let measured = ratios
            .iter()
            .map(|(p, r)| format!("{p} partitions: {:.0}%", r * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!(
                "relay throughput at {} ≥ {:.0}% of the bare rdkafka consumer",
                size_name(size),
                floor * 100.0
            ),
            if measured.is_empty() {
                "-".into()
            } else {
                measured
            },
            (!ratios.is_empty()).then(|| ratios.iter().all(|(_, r)| *r >= floor)),
        )
    }

    fn distance_target(&self) -> Target {
        let rtt: Vec<(usize, i32, f64)> = self
            .distance()
            .into_iter()
            .filter_map(|d| Some((d.size, d.partitions, d.ratio()?)))
            .collect();
        (
            "with 50 ms RTT ≥ 80% of the no-delay relay (same path)".into(),
            rtt.iter()
                .map(|(z, p, r)| format!("{} {p}p: {:.0}%", size_name(*z), r * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            (!rtt.is_empty()).then(|| rtt.iter().all(|r| r.2 >= 0.8)),
        )
    }

    fn latency_target(&self) -> Target {
        let lat: Vec<&LatencyRun> = self
            .latency
            .iter()
            .filter(|l| l.rate == 10_000 && l.consumer == RELAY_DISCARD)
            .collect();
        (
            "latency at 10,000 rec/s: p99 < 50 ms".into(),
            lat.iter()
                .map(|l| format!("{}p: p99 {:.1} ms", l.partitions, l.latency.p99_ms))
                .collect::<Vec<_>>()
                .join(", "),
            (!lat.is_empty()).then(|| lat.iter().all(|l| l.latency.p99_ms < 50.0)),
        )
    }

    /// The agent's peak RSS over every run that measured it (the
    /// MirrorMaker 2 peer's is its JVM's, not an agent's).
    fn peak_rss_target(&self) -> Target {
        let peak = self
            .runs
            .iter()
            .filter(|r| r.consumer != MIRROR_MAKER)
            .filter_map(|r| r.peak_rss_mib)
            .chain(self.latency.iter().filter_map(|l| l.agent_peak_rss_mib))
            .chain(self.soak.iter().map(|k| k.hwm_mib))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        (
            "agent peak RSS < 64 MiB (every run)".into(),
            opt(peak, 1) + " MiB",
            peak.map(|p| p < 64.0),
        )
    }

    fn flat_rss_target(&self) -> Target {
        (
            "agent RSS flat over a 10-minute run".into(),
            self.soak.as_ref().map_or("-".into(), |k| {
                format!(
                    "{:.0} s run: {:+.2} MiB per 10 min after the first minute, {:+.2} MiB per 10 min over the second half",
                    k.secs, k.slope_mib_per_10min, k.slope_second_half_mib_per_10min
                )
            }),
            // No growth: over a run of at least 10 minutes, the second half
            // grows by less than 1 MiB per 10 minutes and the end is not above
            // the first minute by more than 1 MiB (a leak keeps growing; the
            // allocator settling in the first minutes, or giving memory back,
            // does not).
            self.soak.as_ref().filter(|k| k.secs >= 590.0).map(|k| {
                k.slope_second_half_mib_per_10min < 1.0 && k.rss_end_mib <= k.rss_after_1min_mib + 1.0
            }),
        )
    }

    /// CPU of the idle agent, and its requests to the broker.
    fn idle_targets(&self) -> [Target; 2] {
        let idle = self.idle.first();
        [
            (
                "idle agent < 1% of a core".into(),
                idle.map_or("-".into(), |i| format!("{:.2}%", i.cpu_pct_of_core)),
                idle.map(|i| i.cpu_pct_of_core < 1.0),
            ),
            (
                "idle: ≤ 5 reads/s per consumer group per partition (OCI)".into(),
                idle.map_or("-".into(), |i| {
                    format!("≤ {:.2} requests/s in total", i.requests_per_s_max)
                }),
                idle.map(|i| i.requests_per_s_max <= 5.0),
            ),
        ]
    }
}
