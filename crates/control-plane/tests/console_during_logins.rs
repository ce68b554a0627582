//! Regression test for a tail the chaos suite found (issue 18, scenario
//! `reconnect-storm`): console tokens and agent passwords were checked
//! behind one small semaphore, so right after a restart (console cache
//! empty) the first console call waited for every queued agent login's
//! argon2 check: 2.5 s with 500 agents reconnecting and the tests' cheap
//! hashes, minutes with real ones. The console now has a permit of its own.

mod common;

use argon2::password_hash::PasswordHasher;
use common::control_plane::{self as cp, Options, TestControlPlane};
use std::time::{Duration, Instant};

/// Agents logging in at once with a password whose check is slow.
const LOGINS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_while_agent_logins_wait_for_their_password_checks() {
    connectivity_common::tls::install_default_provider();
    // Argon2's default parameters: as slow as a real deployment's hash.
    let slow = argon2::Argon2::default()
        .hash_password(b"slow-password")
        .expect("hash")
        .to_string();
    let one_check = {
        let hash = slow.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let parsed = connectivity_control_plane::auth::PasswordHash::parse(&hash).expect("phc");
            assert!(parsed.verify(b"slow-password"));
        })
        .await
        .expect("join");
        started.elapsed()
    };
    let cp = TestControlPlane::start(Options {
        extra_toml: format!(
            "\n[[users]]\nname = \"slow\"\npassword_hash = \"{slow}\"\ngroups = [\"{}\"]\n",
            cp::GROUP
        ),
        ..Options::default()
    })
    .await;
    let logins: Vec<_> = (0..LOGINS)
        .map(|_| {
            let url = cp.ws_url();
            let connector = tokio_tungstenite::Connector::Rustls(cp.pki.client_config());
            tokio::spawn(async move {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut req = url.into_client_request().expect("request");
                req.headers_mut().insert(
                    "authorization",
                    cp::basic("slow", "slow-password").parse().expect("header"),
                );
                tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    // Let the logins reach their password checks, then ask the console
    // (its cache is empty: the first call checks the token's hash).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, _) = cp.console_get("/api/v1/status").await;
    let console = started.elapsed();
    assert_eq!(status, 200);
    for l in logins {
        l.await.expect("join").expect("the slow logins succeed");
    }
    eprintln!("first console call: {console:?}; one password check: {one_check:?}");
    assert!(
        console < one_check,
        "the console took {console:?} while {LOGINS} logins queued for checks of {one_check:?} each"
    );
}
