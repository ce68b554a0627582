//! The webhook sink: one HTTP POST per batch, accepted on any 2xx.
//!
//! Body: `{"job_id":"...","topic":"...","records":[...]}` (records as in
//! [`super::record`]), `Content-Type: application/json`, and an
//! `Idempotency-Key` naming the records (`<job>/<topic>/<partition>:<first>-<last>,...`),
//! identical on every retry of the batch. Redirects are not followed: a POST
//! turned into a GET by a 302 would be reported as delivered while nothing
//! was.

use super::definition::FieldError;
use super::record::OutBatch;
use super::sink::SinkError;
use connectivity_protocol::secret::{MASK, Secret};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use url::{Host, Url};

/// Longest timeout accepted for one webhook request.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// Headers the sink sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "idempotency-key",
];

/// Most of an error response body kept in the error message.
const BODY_EXCERPT: usize = 300;

/// `{"kind":"webhook","url":"https://...","headers":{...},"timeout_ms":10000}`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://` URL; plain `http://` only for a loopback host.
    pub url: String,
    /// Extra request headers, e.g. `Authorization`. Every value is treated as
    /// a secret: masked in logs, errors and the console.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Time allowed for one request, response included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("headers", &self.headers)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The URL with its query (often a token) masked.
pub fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?{MASK}"),
        None => url.to_owned(),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl WebhookConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        let shown = Some(shown_url(&self.url));
        match Url::parse(&self.url) {
            Err(e) => errors.push(FieldError::new(
                "sink.url",
                shown,
                format!("is not a URL ({e})"),
                "give a full URL such as https://hooks.example.com/kafka",
            )),
            Ok(url) => {
                let plain_ok = url.scheme() == "http" && is_loopback(&url);
                if url.scheme() != "https" && url.scheme() != "http" {
                    errors.push(FieldError::new(
                        "sink.url",
                        shown.clone(),
                        format!("uses {}://", url.scheme()),
                        "use https://",
                    ));
                } else if url.scheme() != "https" && !plain_ok {
                    errors.push(FieldError::new(
                        "sink.url",
                        shown.clone(),
                        format!("uses {}:// to a non-loopback host", url.scheme()),
                        "use https:// (plain http:// is accepted only for 127.0.0.1, ::1 or localhost)",
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    errors.push(FieldError::new(
                        "sink.url",
                        Some("(credentials hidden)".into()),
                        "holds credentials",
                        "remove user:password@ from the URL and send them in sink.headers, e.g. \"Authorization\"",
                    ));
                }
            }
        }
        for (name, value) in &self.headers {
            let field = format!("sink.headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(FieldError::new(
                    &field,
                    None,
                    "is not a valid HTTP header name",
                    "use letters, digits and '-' only",
                ));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(FieldError::new(
                    &field,
                    None,
                    "is set by the sink itself",
                    "remove this header",
                ));
            }
            if HeaderValue::from_str(value.expose()).is_err() {
                errors.push(FieldError::new(
                    &field,
                    Some(MASK.into()),
                    "holds characters not allowed in a header value",
                    "use visible ASCII characters only",
                ));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            errors.push(FieldError::new(
                "sink.timeout_ms",
                Some(self.timeout_ms.to_string()),
                "is out of range",
                format!("give a timeout between 1 and {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
    }

    pub(crate) fn redacted(&self) -> WebhookConfig {
        WebhookConfig {
            url: shown_url(&self.url),
            headers: self
                .headers
                .keys()
                .map(|k| (k.clone(), Secret::new(MASK)))
                .collect(),
            timeout_ms: self.timeout_ms,
        }
    }

    pub(crate) fn unmask_from(&mut self, previous: &WebhookConfig) {
        if self.url != previous.url && self.url == shown_url(&previous.url) {
            self.url = previous.url.clone();
        }
        for (name, value) in &mut self.headers {
            if value.expose() == MASK
                && let Some(old) = previous.headers.get(name)
            {
                *value = old.clone();
            }
        }
    }
}

/// A webhook ready to post to.
pub struct WebhookSink {
    client: reqwest::Client,
    url: Url,
    shown: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    pub(crate) fn new(
        config: &WebhookConfig,
        client: reqwest::Client,
    ) -> Result<WebhookSink, SinkError> {
        let shown = shown_url(&config.url);
        let url = Url::parse(&config.url)
            .map_err(|e| SinkError::Config(format!("webhook URL {shown}: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| SinkError::Config(format!("bad header name {name:?}")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| SinkError::Config(format!("bad value for header {name}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(WebhookSink {
            client,
            url,
            shown,
            headers,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    pub(crate) async fn deliver(&self, batch: &OutBatch) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(batch.to_webhook_body());
        if let Ok(key) = HeaderValue::from_str(&idempotency_key(batch)) {
            request = request.header("idempotency-key", key);
        }
        let transport = |e: reqwest::Error| SinkError::Transport {
            url: self.shown.clone(),
            timeout: e.is_timeout(),
            // The error's own URL may carry a token in its query: drop it.
            message: error_chain(&e.without_url()),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)");
            return Err(SinkError::Redirect {
                url: self.shown.clone(),
                status: status.as_u16(),
                location: shown_url(location),
            });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // A short excerpt of the body says why (e.g. a validation message);
        // read no more than that, and give up on it rather than wait.
        let mut body = Vec::new();
        while body.len() < BODY_EXCERPT {
            match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(BODY_EXCERPT);
        let body: String = String::from_utf8_lossy(&body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Err(SinkError::Status {
            url: self.shown.clone(),
            status: status.as_u16(),
            body: body.trim().to_owned(),
            retry_after,
        })
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// `<job>/<topic>/<partition>:<first>-<last>[,...]`, partitions in order.
pub fn idempotency_key(batch: &OutBatch) -> String {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for r in &batch.records {
        let e = ranges.entry(r.partition).or_insert((r.offset, r.offset));
        e.0 = e.0.min(r.offset);
        e.1 = e.1.max(r.offset);
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(p, (a, b))| format!("{p}:{a}-{b}"))
        .collect();
    format!("{}/{}/{}", batch.job_id, batch.topic, parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            headers: BTreeMap::from([("Authorization".into(), Secret::new("Bearer s3cret"))]),
            timeout_ms: 1000,
        }
    }

    fn problems(c: &WebhookConfig) -> Vec<String> {
        let mut errors = vec![];
        c.validate(&mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn https_required_except_loopback() {
        assert!(problems(&config("https://hooks.example.com/x")).is_empty());
        assert!(problems(&config("http://127.0.0.1:8080/x")).is_empty());
        assert!(problems(&config("http://[::1]:8080/x")).is_empty());
        assert!(problems(&config("http://localhost/x")).is_empty());
        assert_eq!(
            problems(&config("ftp://127.0.0.1/x")),
            vec!["sink.url = \"ftp://127.0.0.1/x\": uses ftp://; fix: use https://"]
        );
        assert_eq!(
            problems(&config("http://hooks.example.com/x")),
            vec![
                "sink.url = \"http://hooks.example.com/x\": uses http:// to a non-loopback host; fix: use https:// (plain http:// is accepted only for 127.0.0.1, ::1 or localhost)"
            ]
        );
    }

    #[test]
    fn credentials_in_url_and_reserved_headers_are_refused_without_echoing_secrets() {
        let mut c = config("https://user:pw@h.example/x");
        c.headers
            .insert("Content-Type".into(), Secret::new("text/plain"));
        let p = problems(&c).join("\n");
        assert!(
            p.contains("sink.url = \"(credentials hidden)\": holds credentials"),
            "{p}"
        );
        assert!(
            p.contains("sink.headers.Content-Type: is set by the sink itself"),
            "{p}"
        );
        assert!(!p.contains("pw@"), "{p}");
    }

    #[test]
    fn debug_and_redacted_hide_header_values_and_query() {
        let c = config("https://h.example/x?token=abc");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("abc"), "{dbg}");
        let r = c.redacted();
        assert_eq!(r.url, "https://h.example/x?******");
        assert_eq!(r.headers["Authorization"].expose(), MASK);
        let mut back = r.clone();
        back.unmask_from(&c);
        assert_eq!(back, c);
    }
}
