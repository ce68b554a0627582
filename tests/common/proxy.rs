//! A real HTTP CONNECT proxy for tests: Debian's `tinyproxy`, started in the
//! foreground on a free loopback port with Basic proxy authentication, and
//! killed when the handle drops. `scripts/test.sh` installs the package.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PROXY_USER: &str = "proxyuser";
pub const PROXY_PASSWORD: &str = "proxy-pass";

pub struct TinyProxy {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    pub log: std::path::PathBuf,
}

impl TinyProxy {
    /// Start tinyproxy; `auth` turns on Basic proxy authentication.
    pub fn start(auth: bool) -> TinyProxy {
        let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("tinyproxy is not installed: run scripts/test.sh (it installs it) or apt-get install tinyproxy");
        let dir = tempfile::tempdir().expect("tempdir");
        // Reserve a free port; tinyproxy binds it right after (tiny race, retried below).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\n",
            log.display(),
            dir.path().join("tinyproxy.pid").display()
        );
        if auth {
            conf.push_str(&format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let proxy = TinyProxy {
            port,
            child,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}: {}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
