//! Two small SVG charts, written by hand so the benchmark needs no plotting
//! library: grouped bars (throughput against its ceiling) and lines (memory
//! over time).

use std::fmt::Write;

const W: f64 = 820.0;
const H: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound and step for an axis reaching `max`.
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 0.25);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    s
}

fn y_axis(s: &mut String, top: f64, step: f64, unit: &str) {
    let plot_h = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = H - BOTTOM - v / top * plot_h;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(unit)
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 1000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn legend(s: &mut String, series: &[&str]) {
    let mut x = LEFT;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#,
            H - 22.0,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 16.0,
            H - 12.0,
            esc(name)
        );
        x += 24.0 + 7.0 * name.len() as f64;
    }
}

/// Grouped bars: `values[g][s]` is series `s` in group `g` (`None` = not
/// measured). `lines` are horizontal reference lines (value, label).
pub fn bars(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[&str],
    values: &[Vec<Option<f64>>],
    lines: &[(f64, &str)],
) -> String {
    let max = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .chain(lines.iter().map(|l| l.0))
        .fold(0.0, f64::max);
    let (top, step) = axis(max * 1.05);
    let mut s = header(title);
    y_axis(&mut s, top, step, unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let gw = plot_w / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (g, name) in groups.iter().enumerate() {
        let gx = LEFT + g as f64 * gw + gw * 0.1;
        for (i, v) in values.get(g).into_iter().flatten().enumerate() {
            let Some(v) = v else { continue };
            let h = v / top * plot_h;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                gx + i as f64 * bw,
                H - BOTTOM - h,
                bw * 0.92,
                h,
                COLORS[i % COLORS.len()],
                esc(series.get(i).unwrap_or(&"")),
                fmt_num(*v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            H - BOTTOM + 16.0,
            esc(name)
        );
    }
    for (v, label) in lines {
        let y = H - BOTTOM - v / top * plot_h;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#333" stroke-dasharray="5,4"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
            W - RIGHT - 4.0,
            y - 4.0,
            esc(label)
        );
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// Lines: `series[i] = (name, points (x, y))`.
pub fn lines(
    title: &str,
    x_unit: &str,
    y_unit: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> String {
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let (xtop, _) = axis(pts().map(|p| p.0).fold(0.0, f64::max));
    let (ytop, ystep) = axis(pts().map(|p| p.1).fold(0.0, f64::max) * 1.1);
    let mut s = header(title);
    y_axis(&mut s, ytop, ystep, y_unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let (_, xstep) = axis(xtop);
    let mut x = 0.0;
    while x <= xtop + xstep / 2.0 {
        let px = LEFT + x / xtop * plot_w;
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 16.0,
            fmt_num(x)
        );
        x += xstep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        H - BOTTOM + 34.0,
        esc(x_unit)
    );
    for (i, (_, p)) in series.iter().enumerate() {
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + x / xtop * plot_w,
                    H - BOTTOM - y / ytop * plot_h
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLORS[i % COLORS.len()],
            path.join(" ")
        );
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

/// Checks run under `cargo test`.
pub fn self_check() -> anyhow::Result<()> {
    anyhow::ensure!(axis(87.0) == (100.0, 20.0), "axis(87) = {:?}", axis(87.0));
    let b = bars(
        "t",
        "u",
        &["a".into(), "b".into()],
        &["x", "y"],
        &[vec![Some(1.0), None], vec![Some(2.0), Some(3.0)]],
        &[(2.5, "target")],
    );
    anyhow::ensure!(
        b.starts_with("<svg") && b.matches("<rect x=").count() >= 3,
        "bar chart: {b}"
    );
    let l = lines("t", "s", "MiB", &[("rss", vec![(0.0, 10.0), (60.0, 11.0)])]);
    anyhow::ensure!(l.contains("<polyline"), "line chart: {l}");
    Ok(())
}
