//! The connection test behind the console's "Test" button, run on the agent
//! (the only machine that can reach the private endpoint).
//!
//! It walks the layers in order and stops at the first that cannot work, so
//! the report says *which* layer is broken: allow-list, DNS (each bootstrap
//! host), TCP, TLS (a rustls handshake against the job's truststore, showing
//! the certificate chain the endpoint sent, which is what people need when
//! a truststore is wrong), and Kafka (librdkafka connects, authenticates and
//! fetches the topic's metadata). Everything runs under one deadline.

use crate::allowlist::AllowList;
use crate::kafka::client::connection_config;
use crate::kafka::context::CaptureContext;
use crate::kafka::errors::{self, ErrorLog, Target};
use crate::kafka::metadata;
use connectivity_common::tls::diagnose::{Recording, SeenChain};
pub use connectivity_protocol::connection_test::{
    CertInfo, ConnectionParams, Step, StepName, StepStatus, TestReport,
};
use connectivity_protocol::job::{ErrorClass, JobError, Security};
use connectivity_protocol::truststore;
use connectivity_protocol::validate::{protocol_name, uses_tls};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaResult;
use rustls::pki_types::{CertificateDer, ServerName};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn step(step: StepName, started: Instant, result: Result<String, JobError>) -> Step {
    let (status, detail, error) = match result {
        Ok(detail) => (StepStatus::Passed, detail, None),
        Err(e) => (StepStatus::Failed, String::new(), Some(e)),
    };
    Step {
        step,
        status,
        detail,
        error,
        elapsed_ms: ms(started.elapsed()),
        certificates: Vec::new(),
    }
}

fn skipped(step: StepName, why: &str) -> Step {
    Step {
        step,
        status: StepStatus::Skipped,
        detail: why.to_owned(),
        error: None,
        elapsed_ms: 0,
        certificates: Vec::new(),
    }
}

fn fail(class: ErrorClass, message: String) -> JobError {
    JobError { class, message }
}

/// Run the connection test, all of it within `deadline`: each layer in
/// turn, and the layers after the first that cannot work are skipped.
pub async fn test_connection(
    params: &ConnectionParams,
    allow: &AllowList,
    deadline: Duration,
) -> TestReport {
    let started = Instant::now();
    let end = started + deadline;
    let mut steps = Vec::new();

    // Allow-list first: nothing may be contacted that the operator did not allow.
    let (s, endpoints) = allow_list_step(params, allow).await;
    steps.push(s);
    let Some(endpoints) = endpoints else {
        skip_from(&mut steps, 1, "the endpoint may not be contacted");
        return finish(steps, None, started);
    };
    let (s, resolved) = dns_step(&endpoints, end).await;
    steps.push(s);
    let Some(resolved) = resolved else {
        skip_from(&mut steps, 2, "DNS failed");
        return finish(steps, None, started);
    };
    let (s, connected) = tcp_step(&resolved, end).await;
    steps.push(s);
    if connected.is_empty() {
        skip_from(&mut steps, 3, "no endpoint accepted a TCP connection");
        return finish(steps, None, started);
    }
    steps.push(tls_layer(params, connected, end).await);
    // Kafka: authenticate and fetch metadata. Run even when our own TLS
    // check failed: librdkafka (OpenSSL) is what the job will use.
    let (s, partitions) = kafka_layer(params, end).await;
    steps.push(s);
    finish(steps, partitions, started)
}

/// Mark the layers from index `from` on as skipped, saying why.
fn skip_from(steps: &mut Vec<Step>, from: usize, why: &str) {
    let all = [
        StepName::AllowList,
        StepName::Dns,
        StepName::Tcp,
        StepName::Tls,
        StepName::Kafka,
    ];
    for name in &all[from..] {
        steps.push(skipped(*name, why));
    }
}

/// The allow-list check; the endpoints to contact when it passed.
async fn allow_list_step(
    params: &ConnectionParams,
    allow: &AllowList,
) -> (Step, Option<Vec<(String, u16)>>) {
    let t = Instant::now();
    // The check may resolve names (CIDR rules): off the async threads.
    let (a, bootstrap) = (allow.clone(), params.bootstrap_servers.clone());
    let checked = tokio::task::spawn_blocking(move || a.check_bootstrap(&bootstrap))
        .await
        .unwrap_or_else(|e| Err(format!("allow-list check failed: {e}")));
    match checked.and_then(|()| endpoints(&params.bootstrap_servers)) {
        Ok(eps) => {
            let detail = format!("{} allowed", params.bootstrap_servers.trim());
            (step(StepName::AllowList, t, Ok(detail)), Some(eps))
        }
        Err(message) => {
            let class = if message.contains("agent_ALLOWED_ENDPOINTS") {
                ErrorClass::NotAllowed
            } else {
                ErrorClass::Config
            };
            (
                step(StepName::AllowList, t, Err(fail(class, message))),
                None,
            )
        }
    }
}

/// A resolved endpoint: host, `host:port`, and its addresses.
type Resolved = (String, String, Vec<SocketAddr>);

/// Resolve every endpoint; the addresses when all of them resolved.
async fn dns_step(endpoints: &[(String, u16)], end: Instant) -> (Step, Option<Vec<Resolved>>) {
    let t = Instant::now();
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut problems = Vec::new();
    for (host, port) in endpoints {
        let budget = DNS_TIMEOUT.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(budget, tokio::net::lookup_host((host.as_str(), *port))).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                resolved.push((host.clone(), format!("{host}:{port}"), addrs));
            }
            Ok(Err(e)) => problems.push(format!("cannot resolve {host} ({e})")),
            Err(_) => problems.push(format!("resolving {host} timed out after {budget:?}")),
        }
    }
    if !problems.is_empty() {
        let e = fail(
            ErrorClass::Dns,
            format!(
                "{}; check bootstrap_servers for typos and that this agent's DNS resolves the name \
             (a private endpoint's FQDN needs the VCN's resolver)",
                problems.join("; ")
            ),
        );
        return (step(StepName::Dns, t, Err(e)), None);
    }
    let detail = resolved
        .iter()
        .map(|(_, ep, addrs)| format!("{ep} -> {}", join(addrs)))
        .collect::<Vec<_>>()
        .join("; ");
    (step(StepName::Dns, t, Ok(detail)), Some(resolved))
}

/// A connected endpoint: host, `host:port`, and the connection.
type Connected = (String, String, tokio::net::TcpStream);

/// Connect to every endpoint (its first address that answers); the
/// connections made, even when some endpoints failed.
async fn tcp_step(resolved: &[Resolved], end: Instant) -> (Step, Vec<Connected>) {
    let t = Instant::now();
    let mut connected: Vec<Connected> = Vec::new();
    let mut problems = Vec::new();
    let mut details = Vec::new();
    for (host, ep, addrs) in resolved {
        match connect_any(ep, addrs, end).await {
            Ok((s, detail)) => {
                details.push(detail);
                connected.push((host.clone(), ep.clone(), s));
            }
            Err(last) => problems.push(format!("cannot connect to {ep} ({last})")),
        }
    }
    let result = if problems.is_empty() {
        Ok(details.join("; "))
    } else {
        Err(fail(
            ErrorClass::Tcp,
            format!(
                "{}; check the port, that the endpoint is up, and that firewalls, security lists and routes \
             let this agent reach it",
                problems.join("; ")
            ),
        ))
    };
    (step(StepName::Tcp, t, result), connected)
}

/// Connect to the first of `addrs` that answers: the connection and its
/// detail line, or the last address's failure.
async fn connect_any(
    ep: &str,
    addrs: &[SocketAddr],
    end: Instant,
) -> Result<(tokio::net::TcpStream, String), String> {
    let mut last = String::from("no address");
    for addr in addrs {
        let budget = TCP_TIMEOUT.min(end.saturating_duration_since(Instant::now()));
        let t1 = Instant::now();
        match tokio::time::timeout(budget, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let detail = format!(
                    "{ep} connected via {addr} in {} ms",
                    t1.elapsed().as_millis()
                );
                return Ok((s, detail));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {budget:?}"),
        }
    }
    Err(last)
}

/// TLS: handshake with the first endpoint, as librdkafka will do it; the
/// other connections close when this returns.
async fn tls_layer(params: &ConnectionParams, mut connected: Vec<Connected>, end: Instant) -> Step {
    if !uses_tls(params.security.protocol) {
        return skipped(
            StepName::Tls,
            &format!(
                "security.protocol {} does not use TLS",
                protocol_name(params.security.protocol)
            ),
        );
    }
    let (host, ep, stream) = connected.swap_remove(0);
    let budget = TLS_TIMEOUT.min(end.saturating_duration_since(Instant::now()));
    tls_step(&params.security, &host, &ep, stream, budget).await
}

/// The Kafka step with what is left of the deadline (at least a second);
/// the topic's partition count when it passed.
async fn kafka_layer(params: &ConnectionParams, end: Instant) -> (Step, Option<usize>) {
    let t = Instant::now();
    let budget = end
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let result = kafka_step(params, budget).await;
    let partitions = result.as_ref().ok().and_then(|(_, n)| *n);
    (step(StepName::Kafka, t, result.map(|(d, _)| d)), partitions)
}

fn finish(steps: Vec<Step>, partitions: Option<usize>, started: Instant) -> TestReport {
    let ok = steps.iter().all(|s| s.status != StepStatus::Failed);
    TestReport {
        ok,
        steps,
        partitions,
        elapsed_ms: ms(started.elapsed()),
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoints(bootstrap: &str) -> Result<Vec<(String, u16)>, String> {
    let out: Vec<_> = crate::allowlist::endpoints(bootstrap)?
        .into_iter()
        .map(|(_, host, port)| (host.trim_matches(['[', ']']).to_owned(), port))
        .collect();
    if out.is_empty() {
        return Err("bootstrap_servers is empty; give host:port of the stream endpoint".into());
    }
    Ok(out)
}

async fn tls_step(
    sec: &Security,
    host: &str,
    ep: &str,
    stream: tokio::net::TcpStream,
    budget: Duration,
) -> Step {
    let t = Instant::now();
    let seen = SeenChain::default();
    let result = tls_handshake(sec, host, ep, stream, budget, seen.clone()).await;
    let mut s = step(StepName::Tls, t, result);
    let chain = connectivity_common::tls::diagnose::seen(&seen);
    s.certificates = chain.iter().filter_map(|c| cert_info(c)).collect();
    s
}

/// Handshake with rustls against the job's truststore (or the system's
/// CAs), recording the chain the endpoint sent into `seen`.
async fn tls_handshake(
    sec: &Security,
    host: &str,
    ep: &str,
    stream: tokio::net::TcpStream,
    budget: Duration,
    seen: SeenChain,
) -> Result<String, JobError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, source) = trust_anchors(sec)?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| fail(ErrorClass::Config, format!("cannot use {source}: {e}")))?;
    // Keeps the chain, so the report shows it whether or not it verified.
    let verifier = Recording::new(inner, seen);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(ErrorClass::Other, format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = with_client_auth(builder, sec)?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        fail(
            ErrorClass::Config,
            format!("{host} is not a valid TLS server name: {e}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(budget, connector.connect(name, stream)).await {
        Err(_) => Err(fail(
            ErrorClass::Tls,
            format!(
                "{ep} did not complete a TLS handshake within {budget:?}; check that the port is a TLS listener"
            ),
        )),
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let version = conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            Ok(format!(
                "{ep}: {version} handshake verified against {source}"
            ))
        }
        Ok(Err(e)) => Err(tls_error(ep, host, &source, &e)),
    }
}

/// The CAs to verify against, and how to name them in messages.
fn trust_anchors(sec: &Security) -> Result<(rustls::RootCertStore, String), JobError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(ts) = &sec.truststore else {
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        return Ok((roots, "the system's CA certificates".to_owned()));
    };
    let certs =
        truststore::certificates(ts).map_err(|e| fail(ErrorClass::Config, e.to_string()))?;
    let n = certs.len();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail(
            ErrorClass::Config,
            format!(
                "none of the {n} truststore certificates can be used as a trust anchor; export the stream's CA certificate again"
            ),
        ));
    }
    Ok((roots, format!("the truststore ({added} CA certificates)")))
}

/// Finish the client config with the job's client certificate, when it
/// has one (mutual TLS).
fn with_client_auth(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    sec: &Security,
) -> Result<rustls::ClientConfig, JobError> {
    let (Some(cert), Some(key)) = (&sec.client_cert_pem, &sec.client_key_pem) else {
        return Ok(builder.with_no_client_auth());
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            fail(
                ErrorClass::Config,
                format!("security.client_cert_pem is not PEM: {e}"),
            )
        })?;
    let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| fail(ErrorClass::Config, "security.client_key_pem holds no PEM private key; give a PKCS#8, PKCS#1 or SEC1 key".into()))?;
    builder.with_client_auth_cert(certs, key).map_err(|e| {
        fail(
            ErrorClass::Config,
            format!("client certificate and key do not fit together: {e}"),
        )
    })
}

fn tls_error(ep: &str, host: &str, source: &str, e: &std::io::Error) -> JobError {
    use rustls::CertificateError as C;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let message = match inner {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer)) => format!(
            "{ep} sent a certificate chain that is not signed by a CA in {source} (see the certificates below); \
             add the issuing CA to the truststore (openssl s_client -showcerts -connect {ep} prints the chain)"
        ),
        Some(rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => format!(
            "{ep} sent a certificate that does not name {host}; connect by a name the certificate holds"
        ),
        Some(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
            format!("{ep} sent an expired certificate; the endpoint's operator must renew it")
        }
        Some(other) => format!("the TLS handshake with {ep} failed: {other}"),
        None => format!(
            "the TLS handshake with {ep} failed: {e}; check that the port is a TLS listener \
             (OCI Streaming: SASL_SSL on port 9092)"
        ),
    };
    fail(ErrorClass::Tls, message)
}

fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let c = connectivity_common::tls::cert::CertFacts::parse(der)?;
    Some(CertInfo {
        not_before: c.not_before_text(),
        not_after: c.not_after_text(),
        expired: c.not_after < connectivity_common::tls::cert::now_secs(),
        subject: c.subject,
        issuer: c.issuer,
    })
}

/// Connect with librdkafka, authenticate, and fetch the topic's metadata.
/// Returns the detail line and the partition count.
async fn kafka_step(
    params: &ConnectionParams,
    budget: Duration,
) -> Result<(String, Option<usize>), JobError> {
    let target = target_of(params);
    let secrets: Vec<String> = params
        .security
        .sasl
        .iter()
        .map(|s| s.password.expose().to_owned())
        .collect();
    let redact = |mut e: JobError| {
        e.message = errors::redact(
            &e.message,
            &secrets.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        e
    };
    let config = connection_config(&params.bootstrap_servers, &params.security)
        .map_err(|e| fail(ErrorClass::Config, e.to_string()))?;
    let ctx = CaptureContext {
        label: "connection-test".into(),
        ..Default::default()
    };
    let log = ctx.errors.clone();
    // No group.id: the client's main queue is then polled by `poll` below,
    // which serves librdkafka's error events while the metadata request waits.
    let consumer: Arc<BaseConsumer<CaptureContext>> =
        Arc::new(config.create_with_context(ctx).map_err(|e| {
            redact(fail(
                ErrorClass::Config,
                format!("cannot create the Kafka client: {e}"),
            ))
        })?);
    let (result, reported) = fetch_metadata(consumer, params.topic.clone(), budget, &log, &target)
        .await
        .map_err(redact)?;
    describe_metadata(result, &reported, &target).map_err(redact)
}

/// What the failures of a connection test are about.
fn target_of(params: &ConnectionParams) -> Target {
    Target {
        bootstrap: params.bootstrap_servers.trim().to_owned(),
        topic: params.topic.clone().unwrap_or_default(),
        group: String::new(),
        protocol: protocol_name(params.security.protocol),
        sasl: params
            .security
            .sasl
            .as_ref()
            .map(|s| (s.mechanism.as_kafka(), s.username.clone())),
    }
}

/// The metadata request's outcome, as it came off the blocking thread.
type Fetched = Result<KafkaResult<metadata::Summary>, tokio::task::JoinError>;

/// Run the metadata request on a blocking thread while serving the
/// client's events; `Err` as soon as they show a definite cause (bad
/// password, untrusted certificate, unknown host), which ends the wait early.
/// Returns the outcome and the failures the client reported meanwhile.
async fn fetch_metadata(
    consumer: Arc<BaseConsumer<CaptureContext>>,
    topic: Option<String>,
    budget: Duration,
    log: &ErrorLog,
    target: &Target,
) -> Result<(Fetched, Vec<errors::Reported>), JobError> {
    let c2 = consumer.clone();
    let timeout = budget
        .saturating_sub(Duration::from_millis(200))
        .max(Duration::from_millis(500));
    let stop = metadata::StopOnDrop::default();
    let stop_flag = stop.0.clone();
    let mut meta = tokio::task::spawn_blocking(move || {
        metadata::fetch(&*c2, topic.as_deref(), timeout, &stop_flag)
    });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            r = &mut meta => break r,
            _ = tick.tick() => {
                // Serve error events; a definite cause ends the wait early.
                serve_events(&consumer);
                if let Some(e) = errors::definite(&log.snapshot(), target) {
                    drop(stop);
                    break_blocking(consumer);
                    return Err(e);
                }
            }
        }
    };
    serve_events(&consumer);
    Ok((result, log.take()))
}

/// The Kafka step's detail line and partition count from the metadata,
/// or the classified failure (not yet redacted).
fn describe_metadata(
    result: Fetched,
    reported: &[errors::Reported],
    target: &Target,
) -> Result<(String, Option<usize>), JobError> {
    let who = match &target.sasl {
        Some((mech, user)) => format!("authenticated as {user:?} with SASL {mech}"),
        None => format!("connected with {}", target.protocol),
    };
    match result {
        Err(join) => Err(fail(
            ErrorClass::Other,
            format!("the metadata request failed: {join}"),
        )),
        Ok(Err(e)) => Err(errors::classify(Some(&e), reported, target)),
        Ok(Ok(metadata::Summary {
            brokers,
            advertised,
            topic: None,
        })) => Ok((
            format!(
                "{who}; {brokers} brokers in the cluster, advertised as {}",
                advertised.join(", ")
            ),
            None,
        )),
        Ok(Ok(metadata::Summary {
            brokers,
            advertised,
            topic: Some((None, n)),
        })) => Ok((
            format!(
                "{who}; topic {:?} has {n} partitions; {brokers} brokers, advertised as {}",
                target.topic,
                advertised.join(", ")
            ),
            Some(n),
        )),
        Ok(Ok(metadata::Summary {
            topic: Some((Some(code), _)),
            ..
        })) => Err(errors::classify_one(Some(code), "", target)),
    }
}

/// Serve the events librdkafka queued (errors, log lines) so the context
/// records them; `poll` handles one event per call.
fn serve_events(consumer: &BaseConsumer<CaptureContext>) {
    for _ in 0..64 {
        let _ = consumer.poll(Duration::ZERO);
    }
}

/// Drop the client on a blocking thread: its destructor waits for the
/// metadata request still in flight.
fn break_blocking(consumer: Arc<BaseConsumer<CaptureContext>>) {
    tokio::task::spawn_blocking(move || drop(consumer));
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectivity_common::timefmt::rfc3339_secs as rfc3339;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_118_922), "2025-11-26T01:02:02Z");
        // Dates before 1970 (no real certificate has them) clamp to the epoch.
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn not_allowed_endpoint_is_never_contacted() {
        let params = ConnectionParams {
            bootstrap_servers: "kafka.internal:9092".into(),
            topic: None,
            security: Security::default(),
        };
        let report = test_connection(&params, &AllowList::default(), Duration::from_secs(5)).await;
        assert!(!report.ok);
        let s = report.step(StepName::AllowList).unwrap();
        assert_eq!(s.error.as_ref().unwrap().class, ErrorClass::NotAllowed);
        for name in [StepName::Dns, StepName::Tcp, StepName::Tls, StepName::Kafka] {
            assert_eq!(report.step(name).unwrap().status, StepStatus::Skipped);
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["steps"][0]["step"], "allow_list");
        assert_eq!(json["steps"][0]["error"]["class"], "not_allowed");
        assert_eq!(json["steps"][1]["status"], "skipped");
        let summary = report.summary();
        assert!(
            summary.starts_with("allow_list step failed: ")
                && summary.ends_with(&s.error.as_ref().unwrap().message),
            "{summary}"
        );
    }

    #[test]
    fn step_names_are_the_wire_names() {
        for name in [
            StepName::AllowList,
            StepName::Dns,
            StepName::Tcp,
            StepName::Tls,
            StepName::Kafka,
        ] {
            assert_eq!(serde_json::to_value(name).unwrap(), name.as_str());
        }
    }

    #[tokio::test]
    async fn unresolvable_host_fails_dns_and_skips_the_rest() {
        let params = ConnectionParams {
            bootstrap_servers: "no-such-host.invalid:9092".into(),
            topic: None,
            security: Security::default(),
        };
        let allow = AllowList::parse("*.invalid:9092").unwrap();
        let report = test_connection(&params, &allow, Duration::from_secs(10)).await;
        let dns = report.step(StepName::Dns).unwrap();
        assert_eq!(dns.status, StepStatus::Failed);
        let e = dns.error.as_ref().unwrap();
        assert_eq!(e.class, ErrorClass::Dns);
        assert!(
            e.message
                .starts_with("cannot resolve no-such-host.invalid ("),
            "{}",
            e.message
        );
        assert_eq!(
            report.step(StepName::Kafka).unwrap().status,
            StepStatus::Skipped
        );
        assert_eq!(report.summary(), format!("dns step failed: {}", e.message));
    }

    #[tokio::test]
    async fn closed_port_fails_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let params = ConnectionParams {
            bootstrap_servers: format!("127.0.0.1:{port}"),
            topic: None,
            security: Security::default(),
        };
        let allow = AllowList::parse("127.0.0.1:*").unwrap();
        let report = test_connection(&params, &allow, Duration::from_secs(10)).await;
        assert_eq!(
            report.step(StepName::Dns).unwrap().status,
            StepStatus::Passed
        );
        let tcp = report.step(StepName::Tcp).unwrap();
        assert_eq!(
            tcp.error.as_ref().unwrap().class,
            ErrorClass::Tcp,
            "{tcp:?}"
        );
        assert!(tcp.error.as_ref().unwrap().message.starts_with(&format!(
            "cannot connect to 127.0.0.1:{port} (127.0.0.1:{port}: "
        )));
    }
}
