//! A flood of wrong passwords against a real control plane: past the limit
//! per source address, every kind of login from that address is answered
//! 429 with `Retry-After`, while a console token already checked keeps
//! working.

mod common;

use common::control_plane::{self as cp, Options, TestControlPlane};
use connectivity_control_plane::login_limit::PER_SOURCE;

async fn agent_login(t: &TestControlPlane, password: &str) -> reqwest::Response {
    t.http()
        .get(format!("{}/agent/v1", t.base_url()))
        .header("authorization", cp::basic(cp::USER, password))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn wrong_passwords_from_one_source_are_throttled_before_any_check() {
    let t = TestControlPlane::start(Options::default()).await;
    // The operator's console token is checked once before the flood.
    let (status, _) = t.console_get("/api/v1/agents").await;
    assert_eq!(status, 200);

    for i in 0..PER_SOURCE {
        let resp = agent_login(&t, &format!("wrong-{i}")).await;
        assert_eq!(resp.status(), 401, "attempt {i}");
    }
    let resp = agent_login(&t, "wrong-again").await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        format!(
            "too many failed logins from this address or for this name; try again in {retry_after} s"
        )
    );

    // The right password from the same address waits too: nothing is checked.
    assert_eq!(agent_login(&t, cp::PASSWORD).await.status(), 429);
    let resp = t
        .http()
        .post(format!("{}/oauth2/v1/token", t.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cp::CLIENT_ID),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let resp = t
        .http()
        .get(format!("{}/api/v1/agents", t.base_url()))
        .bearer_auth("not-the-console-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);

    // A console token already verified is remembered and still works.
    let (status, _) = t.console_get("/api/v1/agents").await;
    assert_eq!(status, 200);
    t.stop().await;
}
