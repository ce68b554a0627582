//! Classifies librdkafka failures into an [`ErrorClass`] and a message that
//! names what is wrong and how to fix it.
//!
//! librdkafka's error codes are coarse (`_TRANSPORT`, `_ALL_BROKERS_DOWN`);
//! the cause is in the text of its error events and warning log lines
//! ("Failed to resolve ...", "SSL handshake failed ... certificate verify
//! failed", "SASL authentication error: Authentication failed ..."). So the
//! clients' contexts keep the last few of those in an [`ErrorLog`], and
//! [`classify`] looks at the code and the texts together, preferring the most
//! specific cause: when authentication fails, "all brokers down" follows, and
//! the user needs to hear about the password, not about brokers.

use connectivity_protocol::job::{ErrorClass, JobError};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// What a failure is about, for messages: the endpoint, topic, group and
/// SASL identity (never the password).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub protocol: &'static str,
    /// `(mechanism, username)` when SASL is used.
    pub sasl: Option<(&'static str, String)>,
}

impl Target {
    pub fn of(spec: &connectivity_protocol::job::JobSpec) -> Target {
        Target {
            bootstrap: spec.bootstrap_servers.trim().to_owned(),
            topic: spec.topic.clone(),
            group: spec.consumer_group.clone(),
            protocol: connectivity_protocol::validate::protocol_name(spec.security.protocol),
            sasl: spec
                .security
                .sasl
                .as_ref()
                .map(|s| (s.mechanism.as_kafka(), s.username.clone())),
        }
    }
}

/// One failure librdkafka reported: its code when it had one, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub code: Option<RDKafkaErrorCode>,
    pub text: String,
}

/// The last few failures a client reported, shared between its context
/// (which records them from librdkafka's threads) and the code that has to
/// explain a failure.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog(Arc<Mutex<VecDeque<Reported>>>);

const ERROR_LOG_LEN: usize = 16;

impl ErrorLog {
    pub fn record(&self, code: Option<RDKafkaErrorCode>, text: &str) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == ERROR_LOG_LEN {
            q.pop_front();
        }
        q.push_back(Reported {
            code,
            text: text.to_owned(),
        });
    }

    /// The recorded failures, oldest first, and forget them.
    pub fn take(&self) -> Vec<Reported> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// The recorded failures, oldest first, keeping them.
    pub fn snapshot(&self) -> Vec<Reported> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// The code of a [`KafkaError`], if it carries one.
pub fn code_of(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    err.rdkafka_error_code()
}

/// How specific a class is, to pick the cause among several reports.
fn rank(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Sasl | ErrorClass::Tls | ErrorClass::Dns => 5,
        ErrorClass::Authorization | ErrorClass::TopicMissing => 4,
        ErrorClass::Tcp => 3,
        ErrorClass::Config
        | ErrorClass::NotAllowed
        | ErrorClass::Sink
        | ErrorClass::OutOfRange
        | ErrorClass::TooLarge
        | ErrorClass::Busy => 2,
        ErrorClass::Other => 1,
    }
}

/// One report as the classifying rules see it.
struct Report {
    code: Option<RDKafkaErrorCode>,
    /// The text in lower case, searched for known phrases.
    lower: String,
    /// The text as a suffix for messages, empty when there is none.
    detail: String,
}

impl Report {
    fn new(code: Option<RDKafkaErrorCode>, text: &str) -> Report {
        let detail = if text.is_empty() {
            String::new()
        } else {
            format!(" (librdkafka: {})", text.trim())
        };
        Report {
            code,
            lower: text.to_ascii_lowercase(),
            detail,
        }
    }

    fn has(&self, s: &str) -> bool {
        self.lower.contains(s)
    }
}

fn err(class: ErrorClass, message: String) -> JobError {
    JobError { class, message }
}

/// Classify one report: the families are tried from the most specific
/// cause to the least, and the first that matches names the fix.
pub fn classify_one(code: Option<RDKafkaErrorCode>, text: &str, t: &Target) -> JobError {
    let r = Report::new(code, text);
    dns(&r, t)
        .or_else(|| sasl(&r, t))
        .or_else(|| tls(&r, t))
        .or_else(|| authorization(&r, t))
        .or_else(|| group_or_topic(&r, t))
        .or_else(|| tcp(&r, t))
        .unwrap_or_else(|| other(&r, t))
}

/// The endpoint's name does not resolve.
fn dns(r: &Report, t: &Target) -> Option<JobError> {
    let detail = &r.detail;
    if r.has("failed to resolve") || r.code == Some(RDKafkaErrorCode::Resolve) {
        return Some(err(
            ErrorClass::Dns,
            format!(
                "cannot resolve the stream endpoint {}{detail}; check bootstrap_servers for typos and that \
                 this agent's DNS resolves the name (a private endpoint's FQDN needs the VCN's resolver)",
                t.bootstrap
            ),
        ));
    }
    None
}

/// The credentials or the SASL mechanism were refused.
fn sasl(r: &Report, t: &Target) -> Option<JobError> {
    use RDKafkaErrorCode as C;
    let detail = &r.detail;
    if r.has("sasl authentication error")
        || r.has("authentication failed")
        || r.has("invalid credentials")
        || r.has("invalid username or password")
        || r.code == Some(C::Authentication)
        || r.code == Some(C::SaslAuthenticationFailed)
    {
        let who = match &t.sasl {
            Some((mech, user)) => format!("user {user:?} with SASL {mech}"),
            None => "the client".to_owned(),
        };
        return Some(err(
            ErrorClass::Sasl,
            format!(
                "the stream endpoint {} rejected {who}{detail}; check the username and password \
                 (OCI Streaming: username <tenancy>/<user>/<stream pool OCID>, password an auth token of that user)",
                t.bootstrap
            ),
        ));
    }
    if r.has("unsupported sasl mechanism") || r.code == Some(C::UnsupportedSASLMechanism) {
        let mech = t.sasl.as_ref().map(|(m, _)| *m).unwrap_or("-");
        return Some(err(
            ErrorClass::Sasl,
            format!(
                "the stream endpoint {} does not offer SASL mechanism {mech}{detail}; choose one it enables \
                 (OCI Streaming: PLAIN)",
                t.bootstrap
            ),
        ));
    }
    None
}

/// The certificate was not trusted, the handshake failed, or the listener
/// does not speak the configured protocol.
fn tls(r: &Report, t: &Target) -> Option<JobError> {
    let detail = &r.detail;
    if r.has("certificate verify failed") || r.has("broker certificate could not be verified") {
        let why = if r.has("hostname mismatch") || r.has("hostname") {
            "its certificate does not name the host in bootstrap_servers: connect by the name in the certificate"
        } else if r.has("expired") {
            "its certificate has expired: the stream's operator must renew it"
        } else {
            "its certificate is not signed by a CA in the truststore: add the stream's CA certificate to the \
             truststore (openssl s_client -showcerts -connect <host>:<port> shows the chain)"
        };
        return Some(err(
            ErrorClass::Tls,
            format!(
                "the TLS handshake with {} failed: {why}{detail}",
                t.bootstrap
            ),
        ));
    }
    if r.has("ssl handshake failed")
        || r.has("ssl") && r.has("wrong version number")
        || r.code == Some(RDKafkaErrorCode::SSL)
    {
        return Some(err(
            ErrorClass::Tls,
            format!(
                "the TLS handshake with {} failed{detail}; check that the port is a TLS listener \
                 (security.protocol {} expects TLS) and that the truststore holds its CA",
                t.bootstrap, t.protocol
            ),
        ));
    }
    if r.has("might be caused by incorrect security.protocol")
        || r.has("connecting to a ssl listener")
    {
        return Some(err(
            ErrorClass::Tls,
            format!(
                "{} closed the connection during the first request{detail}; security.protocol {} probably does not \
                 match the listener (OCI Streaming needs SASL_SSL on port 9092)",
                t.bootstrap, t.protocol
            ),
        ));
    }
    None
}

/// The SASL user may not read the topic, use the group, or do something
/// else it tried.
fn authorization(r: &Report, t: &Target) -> Option<JobError> {
    use RDKafkaErrorCode as C;
    let detail = &r.detail;
    if matches!(r.code, Some(C::TopicAuthorizationFailed)) || r.has("topic authorization failed") {
        return Some(err(
            ErrorClass::Authorization,
            format!(
                "not authorized to read topic {:?}{detail}; grant the SASL user read access to it (OCI: a policy \
             allowing the user's group to `use stream-pull` in the stream's compartment)",
                t.topic
            ),
        ));
    }
    if matches!(r.code, Some(C::GroupAuthorizationFailed)) || r.has("group authorization failed") {
        return Some(err(
            ErrorClass::Authorization,
            format!(
                "not authorized to use consumer group {:?}{detail}; grant the SASL user read access to the group \
             (OCI: `use stream-pull` covers groups)",
                t.group
            ),
        ));
    }
    if matches!(r.code, Some(C::ClusterAuthorizationFailed)) || r.has("authorization failed") {
        return Some(err(
            ErrorClass::Authorization,
            format!(
                "the stream endpoint {} refused an operation as not authorized{detail}; grant the SASL user \
             read access to topic {:?} and group {:?}",
                t.bootstrap, t.topic, t.group
            ),
        ));
    }
    None
}

/// The consumer group is shared with other kinds of clients, or the topic
/// does not exist.
fn group_or_topic(r: &Report, t: &Target) -> Option<JobError> {
    use RDKafkaErrorCode as C;
    let detail = &r.detail;
    if matches!(r.code, Some(C::InconsistentGroupProtocol)) || r.has("inconsistent group protocol")
    {
        return Some(err(
            ErrorClass::Config,
            format!(
                "another member of consumer group {:?} uses a different partition assignment strategy{detail}; \
             give this job a consumer group of its own (members of one group must all be agents of this kind)",
                t.group
            ),
        ));
    }
    if matches!(
        r.code,
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition)
    ) || r.has("unknown topic or partition")
        || r.has("topic not available")
    {
        return Some(err(
            ErrorClass::TopicMissing,
            format!(
                "topic {:?} does not exist on {}{detail}; create it, or fix the topic name (names are case-sensitive; \
             on OCI Streaming the topic is the stream name)",
                t.topic, t.bootstrap
            ),
        ));
    }
    None
}

/// The endpoint cannot be reached or does not answer.
fn tcp(r: &Report, t: &Target) -> Option<JobError> {
    use RDKafkaErrorCode as C;
    let detail = &r.detail;
    if r.has("connection refused") {
        return Some(err(
            ErrorClass::Tcp,
            format!(
                "{} refused the connection{detail}; check the port and that the stream endpoint is up",
                t.bootstrap
            ),
        ));
    }
    if r.has("timed out") && (r.has("connect") || r.has("apiversion"))
        || r.has("no route to host")
        || r.has("network is unreachable")
    {
        return Some(err(
            ErrorClass::Tcp,
            format!(
                "cannot connect to {}{detail}; check that firewalls, security lists and routes let this agent \
             reach the endpoint",
                t.bootstrap
            ),
        ));
    }
    if matches!(r.code, Some(C::AllBrokersDown | C::BrokerTransportFailure))
        || r.has("all broker connections are down")
    {
        return Some(err(
            ErrorClass::Tcp,
            format!(
                "cannot reach any broker of {}{detail}; check the host, port and network path from this agent",
                t.bootstrap
            ),
        ));
    }
    if matches!(r.code, Some(C::OperationTimedOut | C::RequestTimedOut)) {
        return Some(err(
            ErrorClass::Tcp,
            format!(
                "{} did not answer in time{detail}; check the network path from this agent to the endpoint",
                t.bootstrap
            ),
        ));
    }
    None
}

/// Nothing known: name the code and the text as they are.
fn other(r: &Report, t: &Target) -> JobError {
    let what = match r.code {
        Some(c) => format!("{c}"),
        None => "an error".to_owned(),
    };
    let detail = &r.detail;
    err(
        ErrorClass::Other,
        format!(
            "the stream client reported {what}{detail} (endpoint {})",
            t.bootstrap
        ),
    )
}

/// Classify a failure from the error itself (if any) and what the client
/// recorded before it; the most specific cause wins, the latest among equals.
pub fn classify(err: Option<&KafkaError>, reported: &[Reported], t: &Target) -> JobError {
    let mut best: Option<JobError> = err.map(|e| classify_one(code_of(e), "", t));
    for r in reported {
        let c = classify_one(r.code, &r.text, t);
        if best.as_ref().is_none_or(|b| rank(c.class) >= rank(b.class)) {
            best = Some(c);
        }
    }
    best.unwrap_or_else(|| JobError {
        class: ErrorClass::Other,
        message: format!(
            "the stream client failed without saying why (endpoint {})",
            t.bootstrap
        ),
    })
}

/// Whether `reported` already tells why nothing works, so a caller waiting
/// for a request can stop waiting: bad credentials or TLS (the same for every
/// broker), every bootstrap endpoint unresolvable, or every bootstrap
/// endpoint failing to connect twice (librdkafka reports "all brokers down"
/// only once it knew a broker, not for bootstrap endpoints).
pub fn definite(reported: &[Reported], t: &Target) -> Option<JobError> {
    let e = classify(None, reported, t);
    // Error events only: each failure is also a log line with the same text.
    let every_endpoint = |class: ErrorClass, times: usize| {
        let endpoints: Vec<&str> = t
            .bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        !endpoints.is_empty()
            && endpoints.iter().all(|ep| {
                let tag = format!("{ep}/bootstrap");
                reported
                    .iter()
                    .filter(|r| r.code.is_some() && r.text.contains(&tag))
                    .filter(|r| classify_one(r.code, &r.text, t).class == class)
                    .count()
                    >= times
            })
    };
    let ok = match e.class {
        ErrorClass::Sasl | ErrorClass::Tls => true,
        ErrorClass::Dns => every_endpoint(ErrorClass::Dns, 1),
        ErrorClass::Tcp => {
            reported
                .iter()
                .any(|r| r.code == Some(RDKafkaErrorCode::AllBrokersDown))
                || every_endpoint(ErrorClass::Tcp, 2)
        }
        _ => false,
    };
    ok.then_some(e)
}

/// Replace any of `secrets` in `text` by the mask: a last line of defence so
/// no password ends up in a job error, whatever librdkafka put in its text.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s, connectivity_protocol::secret::MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Target {
        Target {
            bootstrap: "kafka.example:9092".into(),
            topic: "users".into(),
            group: "g1".into(),
            protocol: "SASL_SSL",
            sasl: Some(("PLAIN", "alice".into())),
        }
    }

    fn one(code: Option<RDKafkaErrorCode>, text: &str) -> JobError {
        classify_one(code, text, &t())
    }

    #[test]
    fn texts_from_librdkafka_map_to_classes() {
        use RDKafkaErrorCode as C;
        let cases = [
            (
                Some(C::Resolve),
                "sasl_ssl://nohost:9092/bootstrap: Failed to resolve 'nohost:9092': Name or service not known",
                ErrorClass::Dns,
            ),
            (
                Some(C::BrokerTransportFailure),
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)",
                ErrorClass::Tcp,
            ),
            (
                Some(C::AllBrokersDown),
                "1/1 brokers are down",
                ErrorClass::Tcp,
            ),
            (
                Some(C::SSL),
                "ssl://localhost:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 5ms in state SSL_HANDSHAKE)",
                ErrorClass::Tls,
            ),
            (
                Some(C::Authentication),
                "sasl_ssl://localhost:1/bootstrap: SASL authentication error: Authentication failed: Invalid username or password (after 10ms in state AUTH_REQ)",
                ErrorClass::Sasl,
            ),
            (
                Some(C::TopicAuthorizationFailed),
                "",
                ErrorClass::Authorization,
            ),
            (
                Some(C::GroupAuthorizationFailed),
                "",
                ErrorClass::Authorization,
            ),
            (
                Some(C::UnknownTopicOrPartition),
                "Subscribed topic not available: users: Broker: Unknown topic or partition",
                ErrorClass::TopicMissing,
            ),
            (
                Some(C::BrokerTransportFailure),
                "127.0.0.1:1/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10",
                ErrorClass::Tls,
            ),
            (None, "something odd", ErrorClass::Other),
        ];
        for (code, text, class) in cases {
            assert_eq!(one(code, text).class, class, "{text}");
        }
    }

    #[test]
    fn messages_name_the_problem_and_the_fix() {
        let e = one(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed: Invalid username or password",
        );
        assert_eq!(
            e.message,
            "the stream endpoint kafka.example:9092 rejected user \"alice\" with SASL PLAIN (librdkafka: SASL authentication error: \
             Authentication failed: Invalid username or password); check the username and password (OCI Streaming: username \
             <tenancy>/<user>/<stream pool OCID>, password an auth token of that user)"
        );
        let e = one(Some(RDKafkaErrorCode::UnknownTopicOrPartition), "");
        assert_eq!(
            e.message,
            "topic \"users\" does not exist on kafka.example:9092; create it, or fix the topic name (names are case-sensitive; \
             on OCI Streaming the topic is the stream name)"
        );
        assert!(
            one(None, "certificate verify failed")
                .message
                .contains("add the stream's CA certificate to the truststore")
        );
    }

    #[test]
    fn the_most_specific_report_wins() {
        let reports = vec![
            Reported {
                code: Some(RDKafkaErrorCode::Authentication),
                text: "SASL authentication error: Authentication failed".into(),
            },
            Reported {
                code: Some(RDKafkaErrorCode::AllBrokersDown),
                text: "1/1 brokers are down".into(),
            },
        ];
        let e = classify(
            Some(&KafkaError::MetadataFetch(
                RDKafkaErrorCode::BrokerTransportFailure,
            )),
            &reports,
            &t(),
        );
        assert_eq!(e.class, ErrorClass::Sasl);
        assert_eq!(classify(None, &[], &t()).class, ErrorClass::Other);
    }

    #[test]
    fn definite_causes_end_a_wait_early() {
        let r = |code, text: &str| Reported {
            code: Some(code),
            text: text.into(),
        };
        let refused = r(
            RDKafkaErrorCode::BrokerTransportFailure,
            "kafka.example:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused",
        );
        assert!(
            definite(std::slice::from_ref(&refused), &t()).is_none(),
            "one refused connection may be a blip"
        );
        assert_eq!(
            definite(&[refused.clone(), refused.clone()], &t())
                .unwrap()
                .class,
            ErrorClass::Tcp
        );
        let two = Target {
            bootstrap: "kafka.example:9092, other:9092".into(),
            ..t()
        };
        assert!(
            definite(&[refused.clone(), refused.clone()], &two).is_none(),
            "the other endpoint may work"
        );
        let down = r(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down");
        assert_eq!(
            definite(&[refused, down], &two).unwrap().class,
            ErrorClass::Tcp
        );
        assert_eq!(
            definite(&[r(RDKafkaErrorCode::Authentication, "")], &t())
                .unwrap()
                .class,
            ErrorClass::Sasl
        );
        let unknown = r(
            RDKafkaErrorCode::Resolve,
            "kafka.example:9092/bootstrap: Failed to resolve 'kafka.example:9092'",
        );
        assert_eq!(
            definite(std::slice::from_ref(&unknown), &t())
                .unwrap()
                .class,
            ErrorClass::Dns
        );
        assert!(
            definite(&[unknown], &two).is_none(),
            "other:9092 may resolve"
        );
        assert!(definite(&[], &t()).is_none());
        assert_eq!(
            one(Some(RDKafkaErrorCode::InconsistentGroupProtocol), "").class,
            ErrorClass::Config
        );
    }

    #[test]
    fn redact_masks_secrets_and_the_log_is_bounded() {
        assert_eq!(
            redact("user alice pw hunter2!", &["hunter2", ""]),
            "user alice pw ******!"
        );
        let log = ErrorLog::default();
        for i in 0..40 {
            log.record(None, &format!("e{i}"));
        }
        let got = log.take();
        assert_eq!(got.len(), ERROR_LOG_LEN);
        assert_eq!(got.last().unwrap().text, "e39");
        assert!(log.is_empty());
    }
}
