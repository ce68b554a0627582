//! Talking to systemd: readiness, stopping, status and watchdog pings.
//!
//! A thin layer over the `sd-notify` crate. Every call is a no-op when
//! `NOTIFY_SOCKET` is absent, so the agent runs the same by hand, in a
//! container or under another supervisor. A failed notification is logged,
//! never returned: telling systemd how we are must not stop the agent.
//!
//! The unit (`systemd/connectivity-agent.service`) is `Type=notify` with
//! `WatchdogSec=30s`: call [`notify_ready`] once the first control-plane
//! session is up, [`watchdog_ping`] every [`watchdog_interval`] from the main
//! loop (from the start, not only after ready), and [`notify_stopping`] when
//! the drain begins.

use sd_notify::NotifyState;
use std::time::Duration;

/// Tell systemd the agent is up (`READY=1`): `systemctl start` returns now.
pub fn notify_ready() {
    send(&[NotifyState::Ready], "ready");
}

/// Tell systemd a graceful stop has begun (`STOPPING=1`).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping], "stopping");
}

/// One line shown by `systemctl status` (`STATUS=...`), for example
/// "connected to https://cp.example.com:7443, 3 jobs". Never put a secret here.
pub fn notify_status(status: &str) {
    // A newline would end the STATUS= field and start a bogus assignment.
    let line = status.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)], "status");
}

/// Tell systemd the main loop is alive (`WATCHDOG=1`).
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog], "watchdog");
}

/// How often to call [`watchdog_ping`]: half of systemd's `WATCHDOG_USEC`, so
/// one late tick does not get the agent killed. `None` when no watchdog is
/// set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

fn send(state: &[NotifyState], what: &'static str) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(%err, notification = what, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    //! `sd-notify` reads the process environment, and changing it needs
    //! `unsafe` in edition 2024 (and races other tests). So the parent test
    //! binds a real datagram socket and re-runs this test binary with
    //! `NOTIFY_SOCKET`/`WATCHDOG_USEC` set only for the child, which runs the
    //! `#[ignore]`d `child_*` test. Run by hand, without those variables, the
    //! child tests prove the calls are harmless no-ops.
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;

    fn run_child(test: &str, socket: &std::path::Path, watchdog_usec: &str) {
        let exe = std::env::current_exe().expect("test binary path");
        let out = Command::new(exe)
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NOTIFY_SOCKET", socket)
            .env("WATCHDOG_USEC", watchdog_usec)
            .env_remove("WATCHDOG_PID")
            .output()
            .expect("run child test");
        assert!(
            out.status.success(),
            "child {test} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child ran no test"
        );
    }

    #[test]
    fn sends_each_notification_to_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        run_child(
            "service::tests::child_sends_notifications",
            &path,
            "10000000",
        );

        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            let n = sock.recv(&mut buf).expect("a notification from the child");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\n",
                "STATUS=connected to cp 2 jobs\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n"
            ]
        );
    }

    #[test]
    #[ignore = "run by sends_each_notification_to_notify_socket in a child process"]
    fn child_sends_notifications() {
        notify_ready();
        notify_status("connected to cp\n2 jobs");
        watchdog_ping();
        notify_stopping();
        match std::env::var_os("WATCHDOG_USEC") {
            Some(_) => assert_eq!(watchdog_interval(), Some(Duration::from_secs(5))),
            None => assert_eq!(watchdog_interval(), None),
        }
    }

    #[test]
    fn unreachable_socket_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // Nobody listens there: sends fail, the calls must still return.
        run_child(
            "service::tests::child_sends_notifications",
            &dir.path().join("absent.sock"),
            "10000000",
        );
    }
}
