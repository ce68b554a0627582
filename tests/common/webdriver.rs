//! A real browser for tests: Debian's `chromium`, headless, driven through
//! `chromedriver` with the W3C WebDriver protocol (JSON over HTTP, spoken
//! here with the `reqwest` the tests already have: the dozen commands the
//! console's tests use do not need a WebDriver crate and its dependencies).
//!
//! [`ChromeDriver::start`] runs `chromedriver` on a free port and stops it
//! when dropped; [`Browser`] is one session (one browser window, 1280x800,
//! trusting any certificate since the control plane's is from a test CA).
//! `CHROMIUM` and `CHROMEDRIVER` override `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`.
#![allow(dead_code)] // only the browser tests use it

use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest wait for something to show on the page.
pub const PAGE_WAIT: Duration = Duration::from_secs(40);

fn binary(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A `chromedriver` process, killed on drop.
pub struct ChromeDriver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    /// Start chromedriver on a free loopback port and wait until it is ready.
    pub async fn start() -> ChromeDriver {
        // reqwest is built without a default TLS provider; chromedriver
        // speaks plain HTTP, but the client wants one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let exe = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {exe} ({e}); install Debian's chromium and chromium-driver")
            });
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok();
            if let Some(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless browser window of `width` x `height`.
    pub async fn browser(&self, width: u32, height: u32) -> Browser {
        self.browser_with_args(width, height, &[]).await
    }

    /// [`Self::browser`] with more command-line flags for chromium.
    pub async fn browser_with_args(&self, width: u32, height: u32, extra: &[&str]) -> Browser {
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--lang=en-US",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--window-size={width},{height}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": binary("CHROMIUM", "/usr/bin/chromium"),
                "args": args
            }
        }}});
        let resp: Value = self
            .http
            .post(format!("{}/session", self.url))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session json");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {resp}"));
        let b = Browser {
            http: self.http.clone(),
            session: format!("{}/session/{id}", self.url),
        };
        b.set_window_size(width, height).await;
        b
    }
}

impl ChromeDriver {
    /// The process id of `chromedriver` (its browsers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An element on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    /// A WebDriver command; its `value`, or a panic with the driver's error.
    pub async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method.parse().expect("method"), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == "POST" {
            req = req.json(&json!({}));
        }
        let resp: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        resp["value"].clone()
    }

    /// Like [`Self::cmd`], `Err` with the driver's error instead of a value.
    async fn try_cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let v = self.cmd(method, path, body).await;
        match v.get("error") {
            Some(e) => Err(format!("{e}: {}", v["message"])),
            None => Ok(v),
        }
    }

    /// Make the page's viewport `width` x `height` (the window is larger
    /// by whatever the browser's own frame takes).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        let (mut w, mut h) = (width, height);
        for _ in 0..3 {
            self.cmd(
                "POST",
                "/window/rect",
                Some(json!({"width": w, "height": h})),
            )
            .await;
            let inner = self
                .execute("return [window.innerWidth, window.innerHeight]", vec![])
                .await;
            let (iw, ih) = (
                inner[0].as_u64().unwrap_or(0) as u32,
                inner[1].as_u64().unwrap_or(0) as u32,
            );
            if (iw, ih) == (width, height) {
                return;
            }
            w = (w + width).saturating_sub(iw);
            h = (h + height).saturating_sub(ih);
        }
    }

    pub async fn goto(&self, url: &str) {
        self.try_cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The first element matching `css`, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        let v = self
            .try_cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// Wait for an element matching `css` to exist.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css} on the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.try_cmd("POST", &format!("/element/{}/click", e.0), None)
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Type `text` into the element (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{}/clear", e.0), None)
            .await;
        self.type_into(&e, text).await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.try_cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap_or_else(|err| panic!("type into {e:?}: {err}"));
    }

    /// Choose the option with `value` of the `<select>` matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// The element's visible text ("" if it is not there).
    pub async fn text(&self, css: &str) -> String {
        match self.try_find(css).await {
            Some(e) => self
                .cmd("GET", &format!("/element/{}/text", e.0), None)
                .await
                .as_str()
                .unwrap_or("")
                .to_owned(),
            None => String::new(),
        }
    }

    /// Wait until the text of `css` satisfies `pred`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let t = self.text(css).await;
            if pred(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: waited for {what}; its text is {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Run an async `script` whose last argument is the callback to call.
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// The focused element's id ("" if it has none).
    pub async fn focused_id(&self) -> String {
        self.execute(
            "return document.activeElement ? document.activeElement.id : ''",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// Press Tab, as a keyboard does (to whatever has the focus).
    pub async fn tab(&self) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": "\u{E004}"}, {"type": "keyUp", "value": "\u{E004}"}]}]});
        self.try_cmd("POST", "/actions", Some(actions))
            .await
            .unwrap_or_else(|e| panic!("press Tab: {e}"));
    }

    /// Every cookie of the page, `HttpOnly` ones included.
    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot"))
            .expect("screenshot base64")
    }

    /// Save a screenshot as `dir/name.png` when `dir` is given.
    pub async fn screenshot_to(&self, dir: Option<&Path>, name: &str) {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).expect("screenshot dir");
            std::fs::write(dir.join(format!("{name}.png")), self.screenshot().await)
                .expect("write screenshot");
        }
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}
