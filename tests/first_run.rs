//! A new user's first run, as docs/CONTROL_PLANE.md "Running it" tells it:
//! `control-plane init`, then the control plane and an agent started with
//! what init wrote, with no other step; and the manual openssl recipe of the
//! same page, run as it is written there.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(40);

/// Kills the process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn control_plane(args: &[&str]) -> std::process::Output {
    Command::new(common::control_plane_bin())
        .args(args)
        .output()
        .expect("run control-plane")
}

fn spawn(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    log: &Path,
    env: &[(&str, &Path)],
) -> Killed {
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().expect("spawn"))
}

/// The bearer token in the `curl` line init prints.
fn token_from(summary: &str) -> String {
    let start = summary.find("Bearer ").expect("a curl line with the token") + "Bearer ".len();
    summary[start..]
        .split('\'')
        .next()
        .expect("token")
        .to_owned()
}

#[tokio::test]
async fn init_makes_a_control_plane_and_an_agent_that_connect_at_once() {
    connectivity_common::tls::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir_arg = dir.to_str().unwrap();

    let out = control_plane(&["init", dir_arg, "--host", "localhost", "--listen", &listen]);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.contains(&format!("oic_URL=https://localhost:{port}\n")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("oic_CA_FILE={}/tls/ca.pem\n", dir.display())),
        "{summary}"
    );

    let config = dir.join("control-plane.toml");
    let profile = dir.join("agent/InstallerProfile.cfg");
    let agent_state = tmp.path().join("agent-state");
    std::fs::create_dir_all(&agent_state).unwrap();
    let _cp = spawn(
        common::control_plane_bin(),
        &["--config", config.to_str().unwrap()],
        &tmp.path().join("control-plane.log"),
        &[],
    );
    // STATE_DIRECTORY is what systemd gives the installed agent.
    let _agent = spawn(
        env!("CARGO_BIN_EXE_connectivity-agent"),
        &["run", "--config", profile.to_str().unwrap()],
        &tmp.path().join("agent.log"),
        &[("STATE_DIRECTORY", &agent_state)],
    );

    let tls = connectivity_common::tls::client_config(Some(&dir.join("tls/ca.pem"))).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/api/v1/agents");
    let token = token_from(&summary);
    let deadline = Instant::now() + WAIT;
    loop {
        let got = http.get(&url).bearer_auth(&token).send().await;
        if let Ok(resp) = got {
            assert_eq!(resp.status(), 200, "the printed console token is refused");
            let list: serde_json::Value = resp.json().await.unwrap();
            if list["agents"][0]["state"] == "connected" {
                assert_eq!(list["agents"][0]["group"], "PRIVATE_GROUP", "{list:#}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not connect; agent log:\n{}\ncontrol plane log:\n{}",
            std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("control-plane.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let again = control_plane(&["init", dir_arg]);
    assert_eq!(again.status.code(), Some(64));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already exist; init never overwrites"),
        "{err}"
    );
}

/// The first ```sh block after the marker in docs/CONTROL_PLANE.md.
fn recipe() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/CONTROL_PLANE.md"
    ))
    .unwrap();
    let marker = "<!-- recipe: openssl CA and server certificate (tests/first_run.rs runs it) -->";
    let after = &doc[doc.find(marker).expect("the recipe's marker") + marker.len()..];
    let start = after.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let block = &after[start..];
    block[..block.find("```").expect("end of the block")].to_owned()
}

#[tokio::test]
async fn the_manual_openssl_recipe_makes_a_certificate_agents_accept() {
    connectivity_common::tls::install_default_provider();
    let script = recipe();
    assert!(script.contains("HOST=cp.example.com\n"), "{script}");
    let script = script.replace("HOST=cp.example.com\n", "HOST=localhost\n");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tls_dir = tmp.path().join("tls");
    let server = connectivity_common::tls::server_config(
        &tls_dir.join("server.pem"),
        &tls_dir.join("server-key.pem"),
    )
    .unwrap();
    let client = connectivity_common::tls::client_config(Some(&tls_dir.join("ca.pem"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map(|_| ())
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await;
    if let Err(e) = handshake {
        panic!("the agent refused the recipe's certificate: {e}");
    }
    accept.await.unwrap().unwrap();
}
