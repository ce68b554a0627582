//! The README's first command: `connectivity-agent demo` runs the whole flow
//! in one process (mock Kafka, control plane, agent, producer) and prints the
//! rows the sink receives.

use std::time::Duration;

#[tokio::test]
async fn demo_delivers_users_rows_to_the_sink() {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_connectivity-agent"))
            .args(["demo", "--rows", "5", "--interval-ms", "100"])
            .output(),
    )
    .await
    .expect("demo did not finish")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("partition"))
        .collect();
    assert!(rows.len() >= 5, "{stdout}");
    // The sink got the Kafka Connect payload only, not the envelope.
    for row in &rows {
        assert!(
            row.contains("\"USERNAME\"") && !row.contains("\"schema\""),
            "{row}"
        );
    }
    let mut ids: Vec<u64> = rows
        .iter()
        .map(|r| {
            let json = &r[r.find('{').unwrap()..];
            serde_json::from_str::<serde_json::Value>(json).unwrap()["ID"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "a row was printed twice: {stdout}");
    assert!(stdout.contains("delivered"), "{stdout}");
    assert!(
        stdout.contains("web console               https://localhost:")
            && stdout.contains("/console/#token="),
        "the console's login link: {stdout}"
    );
    // No warning about the demo's own temporary files (its config once was
    // mode 644; a short-lived certificate would warn of its expiry).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_its_files = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("connectivity-agent-demo-"))
        .collect::<Vec<_>>();
    assert!(about_its_files.is_empty(), "{stderr}");
}
