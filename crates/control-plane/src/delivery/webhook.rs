//! The webhook sink: HTTP POSTs, each accepted on any 2xx.
//!
//! In `batch` mode (the default) a batch becomes one POST per partition it
//! holds, body `{"job_id":"...","topic":"...","records":[...]}` (records as
//! in [`super::record`]); in `record` mode every record is a POST of its own,
//! body the record object (an Oracle Integration trigger takes one message
//! per invocation). Up to `max_parallel` requests of a job are in flight at
//! once, never two of the same partition, so a receiver sees each
//! partition's records in order. `Content-Type: application/json`, and an
//! `Idempotency-Key` naming the records (`<job>/<topic>/<partition>:<first>-<last>`),
//! identical on every retry. A batch is accepted once every one of its
//! requests was; a retry sends only the requests not yet accepted.
//! Connections are kept alive and reused (HTTP/1.1, or HTTP/2 where the
//! receiver offers it in TLS). Redirects are not followed: a POST turned into
//! a GET by a 302 would be reported as delivered while nothing was.

use super::definition::FieldError;
use super::lanes::{self, Accepted, Part};
use super::record::OutBatch;
use super::sink::SinkError;
use connectivity_protocol::Record;
use connectivity_protocol::secret::{MASK, Secret};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

/// Most of a 2xx answer's body read (and dropped) to keep its connection.
const SUCCESS_BODY_DRAINED: usize = 64 * 1024;

/// Most requests of one job in flight at once.
pub const MAX_PARALLEL: u32 = 64;

/// What one request carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookMode {
    /// The records of one partition of a batch: `{"job_id","topic","records":[...]}`.
    #[default]
    Batch,
    /// One record, as the JSON object of its own.
    Record,
}

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
    /// One POST per partition of a batch, or one per record.
    #[serde(default)]
    pub mode: WebhookMode,
    /// Requests of the job in flight at once (1 to [`MAX_PARALLEL`]); never
    /// two of the same partition.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_parallel() -> u32 {
    4
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("headers", &self.headers)
            .field("timeout_ms", &self.timeout_ms)
            .field("mode", &self.mode)
            .field("max_parallel", &self.max_parallel)
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
        if self.max_parallel == 0 || self.max_parallel > MAX_PARALLEL {
            errors.push(FieldError::new(
                "sink.max_parallel",
                Some(self.max_parallel.to_string()),
                "is out of range",
                format!("give 1 to {MAX_PARALLEL} requests in flight (default 4)"),
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
            mode: self.mode,
            max_parallel: self.max_parallel,
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
    mode: WebhookMode,
    max_parallel: usize,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("mode", &self.mode)
            .field("max_parallel", &self.max_parallel)
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
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(WebhookSink {
            client,
            url,
            shown,
            headers,
            timeout: Duration::from_millis(config.timeout_ms),
            mode: config.mode,
            max_parallel: config.max_parallel.clamp(1, MAX_PARALLEL) as usize,
        })
    }

    /// Send the batch's requests not yet in `accepted`, at most
    /// `max_parallel` at once, one partition's in order. Every request
    /// accepted is added to `accepted`, also when another failed; `Ok` when
    /// all of them are.
    pub(crate) async fn deliver(
        &self,
        batch: &OutBatch<'_>,
        accepted: &mut Accepted,
    ) -> Result<(), SinkError> {
        let seen: &Accepted = accepted;
        let lanes = partition_lanes(batch.records);
        let outcomes = lanes::run(lanes, self.max_parallel, |lane| {
            self.send_lane(batch, lane, seen)
        })
        .await;
        lanes::settle(outcomes, accepted)
    }

    /// One partition's records: one request (batch mode) or one per record,
    /// in order, stopping at the first that is not accepted.
    async fn send_lane(
        &self,
        batch: &OutBatch<'_>,
        lane: Vec<&Record>,
        accepted: &Accepted,
    ) -> (Vec<Part>, Option<SinkError>) {
        let size = match self.mode {
            WebhookMode::Batch => lane.len().max(1),
            WebhookMode::Record => 1,
        };
        let mut done = Vec::new();
        for chunk in lane.chunks(size) {
            let part = part_of(chunk);
            if accepted.contains(&part) {
                continue;
            }
            let body = match self.mode {
                WebhookMode::Batch => batch.webhook_body(chunk.iter().copied()),
                WebhookMode::Record => batch.record_body(chunk[0]),
            };
            if let Err(err) = self.post(body, &idempotency_key(batch, part)).await {
                return (done, Some(err));
            }
            done.push(part);
        }
        (done, None)
    }

    async fn post(&self, body: Vec<u8>, key: &str) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .body(body);
        if let Ok(key) = HeaderValue::from_str(key) {
            request = request.header("idempotency-key", key);
        }
        let transport = |e: reqwest::Error| SinkError::Transport {
            url: self.shown.clone(),
            timeout: e.is_timeout(),
            // The error's own URL may carry a token in its query: drop it.
            message: error_chain(&e.without_url()),
        };
        let mut response = request.send().await.map_err(transport)?;
        if !response.status().is_success() {
            return Err(self.refused(response).await);
        }
        // Read a short (usually empty) body to its end, so that the
        // connection goes back to the pool for the next request; a long one
        // is dropped with its connection rather than read into memory.
        let mut left = SUCCESS_BODY_DRAINED;
        while left > 0 {
            match tokio::time::timeout(self.timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len()),
                _ => break,
            }
        }
        Ok(())
    }

    /// The error for an answer other than 2xx.
    async fn refused(&self, mut response: reqwest::Response) -> SinkError {
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)");
            return SinkError::Redirect {
                url: self.shown.clone(),
                status: status.as_u16(),
                location: shown_url(location),
            };
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
        SinkError::Status {
            url: self.shown.clone(),
            status: status.as_u16(),
            body: body.trim().to_owned(),
            retry_after,
        }
    }
}

fn part_of(records: &[&Record]) -> Part {
    let partition = records.first().map_or(0, |r| r.partition);
    let first = records.iter().map(|r| r.offset).min().unwrap_or(0);
    let last = records.iter().map(|r| r.offset).max().unwrap_or(0);
    (partition, first, last)
}

/// The batch's records by partition, each partition's in batch order,
/// partitions in the order they first appear.
fn partition_lanes(records: &[Record]) -> Vec<Vec<&Record>> {
    let mut lanes: Vec<Vec<&Record>> = Vec::new();
    let mut index: HashMap<i32, usize> = HashMap::new();
    for r in records {
        let i = *index.entry(r.partition).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[i].push(r);
    }
    lanes
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

/// `<job>/<topic>/<partition>:<first>-<last>`: the same on every retry.
pub fn idempotency_key(batch: &OutBatch<'_>, (partition, first, last): Part) -> String {
    format!(
        "{}/{}/{partition}:{first}-{last}",
        batch.job_id, batch.topic
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            headers: BTreeMap::from([("Authorization".into(), Secret::new("Bearer s3cret"))]),
            timeout_ms: 1000,
            mode: WebhookMode::Batch,
            max_parallel: 4,
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
    fn mode_and_parallel_requests_default_and_are_checked() {
        let c: WebhookConfig = serde_json::from_str(r#"{"url":"https://h.example/x"}"#).unwrap();
        assert_eq!((c.mode, c.max_parallel), (WebhookMode::Batch, 4));
        let c: WebhookConfig = serde_json::from_str(
            r#"{"url":"https://h.example/x","mode":"record","max_parallel":1}"#,
        )
        .unwrap();
        assert_eq!((c.mode, c.max_parallel), (WebhookMode::Record, 1));
        let mut c = config("https://h.example/x");
        c.max_parallel = 0;
        assert_eq!(
            problems(&c),
            vec![
                "sink.max_parallel = \"0\": is out of range; fix: give 1 to 64 requests in flight (default 4)"
            ]
        );
        let err =
            serde_json::from_str::<WebhookConfig>(r#"{"url":"https://h.example/x","mode":"each"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown variant `each`"), "{err}");
    }

    #[test]
    fn partitions_keep_their_order_in_lanes() {
        let rec = |partition, offset| Record {
            partition,
            offset,
            timestamp: None,
            key: None,
            value: None,
            headers: vec![],
        };
        let records = [rec(3, 1), rec(0, 5), rec(3, 2), rec(0, 6), rec(1, 0)];
        let lanes: Vec<Vec<(i32, i64)>> = partition_lanes(&records)
            .iter()
            .map(|l| l.iter().map(|r| (r.partition, r.offset)).collect())
            .collect();
        assert_eq!(
            lanes,
            vec![vec![(3, 1), (3, 2)], vec![(0, 5), (0, 6)], vec![(1, 0)]]
        );
        assert_eq!(part_of(&partition_lanes(&records)[1]), (0, 5, 6));
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
