//! The report's checks, run under `cargo test`: the medians and ratios it
//! judges targets by, and the Markdown of stored results, which must come
//! out as it did when they were stored.

use super::*;
use anyhow::Context;
use std::path::Path;

/// Stored results (`testdata/NAME.json`) beside the report they rendered
/// to (`testdata/NAME.md`).
const TESTDATA: &str = "benches/relay/testdata";

pub fn self_check() -> anyhow::Result<()> {
    check_distance()?;
    check_compression()?;
    check_rendering()
}

/// The distance ratio is the median delayed run over the median proxied
/// one, and over the direct run in results that have no proxied runs
/// (before commit b36b75f).
fn check_distance() -> anyhow::Result<()> {
    let run = |consumer: &str, rec_per_s: f64| Run {
        part: DISTANCE.into(),
        size: 1024,
        partitions: 6,
        consumer: consumer.into(),
        rec_per_s,
        ..Default::default()
    };
    let mut runs = vec![
        run(RELAY_DISCARD, 100.0),
        run(RELAY_DISCARD_PROXY, 90.0),
        run(RELAY_DISCARD_RTT, 81.0),
        run(RELAY_DISCARD_PROXY, 80.0),
        run(RELAY_DISCARD_RTT, 60.0),
        run(RELAY_DISCARD_PROXY, 100.0),
        run(RELAY_DISCARD_RTT, 72.0),
    ];
    let d = distance_of(&runs);
    anyhow::ensure!(
        d.len() == 1
            && (d[0].direct, d[0].proxied, d[0].delayed) == (Some(100.0), Some(90.0), 72.0),
        "distance medians: direct {:?}, proxied {:?}, delayed {:?}",
        d.first().map(|d| d.direct),
        d.first().map(|d| d.proxied),
        d.first().map(|d| d.delayed)
    );
    anyhow::ensure!(
        d[0].ratio() == Some(0.8),
        "distance ratio {:?}",
        d[0].ratio()
    );
    runs.retain(|r| r.consumer != RELAY_DISCARD_PROXY);
    let d = distance_of(&runs);
    anyhow::ensure!(
        d[0].ratio() == Some(0.72),
        "ratio without proxied runs {:?}",
        d[0].ratio()
    );
    Ok(())
}

/// Compression rows: one per payload, link and codec, medians of their runs.
fn check_compression() -> anyhow::Result<()> {
    let z = |consumer: &str, codec: Option<&str>, payload: &str, rec_per_s: f64, sent: f64| Run {
        part: COMPRESSION.into(),
        size: 1024,
        partitions: 6,
        consumer: consumer.into(),
        records: 1_000_000,
        rec_per_s,
        payload: Some(payload.into()),
        compression: codec.map(Into::into),
        frame_mib: Some(sent),
        frame_raw_mib: Some(1000.0),
        ..Default::default()
    };
    let runs = vec![
        z(RELAY_DISCARD_LINK, None, "words", 10.0, 1000.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "words", 20.0, 500.0),
        z(RELAY_DISCARD_LINK, None, "words", 12.0, 1000.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "words", 30.0, 400.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "random", 9.0, 1000.0),
        z(RELAY_DISCARD, Some("lz4"), "words", 99.0, 500.0),
    ];
    let got: Vec<String> = compression_of(&runs)
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}: {} runs, {} rec/s, sent/raw {:.3}",
                r.consumer,
                r.payload,
                r.codec,
                r.runs,
                r.rec_per_s,
                r.sent_per_raw.unwrap_or(-1.0)
            )
        })
        .collect();
    anyhow::ensure!(
        got == [
            format!("{RELAY_DISCARD_LINK}/words/none: 2 runs, 11 rec/s, sent/raw 1.000"),
            format!("{RELAY_DISCARD_LINK}/words/lz4: 2 runs, 25 rec/s, sent/raw 0.450"),
            format!("{RELAY_DISCARD_LINK}/random/lz4: 1 runs, 9 rec/s, sent/raw 1.000"),
            format!("{RELAY_DISCARD}/words/lz4: 1 runs, 99 rec/s, sent/raw 0.500"),
        ],
        "compression rows: {got:?}"
    );
    Ok(())
}

/// Every stored result renders to the Markdown stored beside it, so a
/// change to the report's code cannot change its tables unnoticed. After
/// changing them on purpose, render again (`cargo bench --bench relay --
/// --render benches/relay/testdata/NAME.json --out DIR`) and copy
/// `DIR/report.md` over `NAME.md`.
fn check_rendering() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(TESTDATA);
    let mut checked = 0;
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let json = entry?.path();
        if json.extension().is_some_and(|e| e == "json") {
            check_rendering_of(&json)?;
            checked += 1;
        }
    }
    anyhow::ensure!(checked > 0, "no stored results in {}", dir.display());
    Ok(())
}

fn check_rendering_of(json: &Path) -> anyhow::Result<()> {
    let md = json.with_extension("md");
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let want = std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
    let got = results.markdown();
    if got == want {
        return Ok(());
    }
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let longest = want.len().max(got.len());
    // Equal lines but unequal text: the last line's end differs.
    let n = (0..longest)
        .find(|&i| want.get(i) != got.get(i))
        .unwrap_or(longest);
    let line = |l: &[&str]| l.get(n).copied().unwrap_or("(end)").to_owned();
    let (w, g) = (line(&want), line(&got));
    anyhow::bail!(
        "{} renders differently from {}; first at line {}:\n  stored:   {w}\n  rendered: {g}",
        json.display(),
        md.display(),
        n + 1
    )
}
