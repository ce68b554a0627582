//! Opening the control channel, one step at a time: DNS, TCP (directly or
//! through an HTTP CONNECT proxy), TLS, then the WebSocket upgrade carrying
//! the credentials. Each failure names its step, so `check` and the logs can
//! say exactly where the path to the control plane breaks.

use super::certificate::{self, CaFile};
use crate::config::{AgentConfig, ProxyConfig, ProxyProtocol};
use base64::Engine;
use connectivity_common::tls::cert::CertFacts;
use connectivity_common::tls::diagnose::{Recording, SeenChain, diagnose, rustls_error, seen};
use connectivity_protocol::{AGENT_PATH, MAX_FRAME_BYTES};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Time allowed for each network step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream of any layering (TCP, TLS over TCP, TLS over TLS to a proxy).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The established control channel.
pub type Channel = WebSocketStream<Box<dyn Io>>;

/// The step of the connection that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Dns,
    Tcp,
    Proxy,
    Tls,
    Auth,
    Hello,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Dns => "DNS",
            Step::Tcp => "TCP",
            Step::Proxy => "proxy",
            Step::Tls => "TLS",
            Step::Auth => "auth",
            Step::Hello => "hello",
        })
    }
}

/// Why the control channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ConnectError {
    pub step: Step,
    pub message: String,
    /// Retrying cannot help (refused credentials); the agent stops.
    pub permanent: bool,
}

impl ConnectError {
    fn new(step: Step, message: impl Into<String>) -> Self {
        ConnectError {
            step,
            message: message.into(),
            permanent: false,
        }
    }
    fn permanent(step: Step, message: impl Into<String>) -> Self {
        ConnectError {
            step,
            message: message.into(),
            permanent: true,
        }
    }
}

/// Everything needed to reach the control plane, prepared once per process.
#[derive(Clone)]
pub struct Connector {
    pub host: String,
    pub port: u16,
    pub proxy: Option<ProxyConfig>,
    /// webpki against the system's CAs and `oic_CA_FILE`; each handshake
    /// wraps it in a [`Recording`] so a refused chain can be explained.
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    ca_file: Arc<CaFile>,
}

/// A verified TLS stream to the control plane and its certificate.
pub struct Verified {
    pub stream: Box<dyn Io>,
    /// The certificate it presented (`None` only if it does not parse).
    pub certificate: Option<CertFacts>,
}

impl Connector {
    pub fn new(config: &AgentConfig) -> Result<Self, connectivity_common::tls::TlsConfigError> {
        let url = &config.control_plane;
        Ok(Connector {
            host: url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned(),
            port: url.port_or_known_default().unwrap_or(443),
            proxy: config
                .proxy
                .clone()
                .filter(|p| p.applies_to(url.host_str().unwrap_or_default())),
            verifier: connectivity_common::tls::verifier(config.ca_file.as_deref())?,
            ca_file: Arc::new(CaFile::load(config.ca_file.as_deref())),
        })
    }

    /// The proxy in use, as `host:port`, for logs and the hello.
    pub fn proxy_address(&self) -> Option<String> {
        self.proxy.as_ref().map(ProxyConfig::address)
    }

    /// DNS, TCP and (through a proxy) CONNECT: a raw stream to the control plane.
    pub async fn open_stream(&self) -> Result<Box<dyn Io>, ConnectError> {
        match &self.proxy {
            None => Ok(Box::new(
                tcp_connect(&self.host, self.port, Step::Tcp).await?,
            )),
            Some(proxy) => {
                let tcp = tcp_connect(&proxy.host, proxy.port, Step::Proxy).await?;
                let stream: Box<dyn Io> = match proxy.protocol {
                    ProxyProtocol::Http => Box::new(tcp),
                    ProxyProtocol::Https => {
                        Box::new(self.tls_handshake(tcp, &proxy.host, Step::Proxy).await?)
                    }
                };
                http_connect(stream, proxy, &self.host, self.port).await
            }
        }
    }

    async fn tls_handshake<S: Io + 'static>(
        &self,
        stream: S,
        host: &str,
        step: Step,
    ) -> Result<tokio_rustls::client::TlsStream<S>, ConnectError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            ConnectError::permanent(step, format!("{host:?} is not a valid TLS server name"))
        })?;
        let chain = SeenChain::default();
        let verifier = Recording::new(self.verifier.clone(), chain.clone());
        let config = connectivity_common::tls::client_config_verified_by(verifier)
            .map_err(|e| ConnectError::permanent(step, e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await {
            Err(_) => Err(ConnectError::new(
                step,
                format!("TLS handshake with {host} timed out after {STEP_TIMEOUT:?}"),
            )),
            Ok(Err(e)) => {
                // The diagnosis speaks of the control plane; a proxy's
                // certificate keeps rustls' words and the short hints.
                let cause = rustls_error(&e)
                    .filter(|_| step == Step::Tls)
                    .and_then(|r| diagnose(r, &seen(&chain), host, &self.ca_file.certs));
                let message = match cause {
                    Some(cause) => format!(
                        "TLS handshake with {host} failed: {}",
                        certificate::refused(&cause, &self.ca_file)
                    ),
                    None => describe_tls_error(host, &e),
                };
                Err(ConnectError::new(step, message))
            }
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// TLS over `stream` to the control plane; the certificate's expiry is
    /// recorded (metric, and a warning within 30 days) once per connection.
    pub async fn open_tls(&self, stream: Box<dyn Io>) -> Result<Verified, ConnectError> {
        let tls = self.tls_handshake(stream, &self.host, Step::Tls).await?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| CertFacts::parse(leaf));
        if let Some(leaf) = &certificate {
            certificate::observe(leaf);
        }
        Ok(Verified {
            stream: Box::new(tls),
            certificate,
        })
    }

    /// The WebSocket upgrade, with `authorization` as the `Authorization` header.
    pub async fn upgrade(
        &self,
        stream: Box<dyn Io>,
        authorization: &str,
    ) -> Result<Channel, ConnectError> {
        let url = format!("wss://{}:{}{AGENT_PATH}", url_host(&self.host), self.port);
        let mut request = url.as_str().into_client_request().map_err(|e| {
            ConnectError::permanent(
                Step::Auth,
                format!("cannot build the request for {url}: {e}"),
            )
        })?;
        let value = HeaderValue::from_str(authorization).map_err(|_| {
            ConnectError::permanent(
                Step::Auth,
                "credentials hold characters not allowed in an HTTP header",
            )
        })?;
        request.headers_mut().insert("authorization", value);
        let config = ws_config();
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        match tokio::time::timeout(STEP_TIMEOUT, handshake).await {
            Err(_) => Err(ConnectError::new(Step::Auth, "WebSocket upgrade timed out")),
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                Err(upgrade_refused(&url, &resp))
            }
            Ok(Err(e)) => Err(ConnectError::new(
                Step::Auth,
                format!("WebSocket upgrade failed: {e}"),
            )),
        }
    }

    /// All steps: a ready control channel.
    pub async fn connect(&self, authorization: &str) -> Result<Channel, ConnectError> {
        let stream = self.open_stream().await?;
        let tls = self.open_tls(stream).await?;
        self.upgrade(tls.stream, authorization).await
    }
}

/// The control plane answered the upgrade with an HTTP error: credentials
/// refused (401), agent forbidden (403) and no endpoint (404) are permanent.
fn upgrade_refused(
    url: &str,
    resp: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> ConnectError {
    let status = resp.status();
    let body = resp
        .body()
        .as_deref()
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
        .unwrap_or_default();
    let detail = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    match status.as_u16() {
        401 => ConnectError::permanent(
            Step::Auth,
            format!(
                "the control plane refused the credentials (HTTP 401){detail}; check oic_USER/oic_PASSWORD or the OAuth client settings"
            ),
        ),
        403 => ConnectError::permanent(
            Step::Auth,
            format!("the control plane forbids this agent (HTTP 403){detail}"),
        ),
        404 => ConnectError::permanent(
            Step::Auth,
            format!(
                "no agent endpoint at {url} (HTTP 404); check that oic_URL names the control plane"
            ),
        ),
        _ => ConnectError::new(
            Step::Auth,
            format!("WebSocket upgrade refused with HTTP {status}{detail}"),
        ),
    }
}

/// WebSocket limits for the agent side.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Resolve and connect, trying every address; `step` names the hop in errors.
async fn tcp_connect(host: &str, port: u16, step: Step) -> Result<TcpStream, ConnectError> {
    let what = if step == Step::Proxy { "proxy " } else { "" };
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Err(_) => {
                return Err(ConnectError::new(
                    Step::Dns,
                    format!("resolving {what}{host} timed out"),
                ));
            }
            Ok(Err(e)) => {
                return Err(ConnectError::new(
                    Step::Dns,
                    format!("cannot resolve {what}{host}: {e}"),
                ));
            }
            Ok(Ok(a)) => a.collect(),
        };
    if addrs.is_empty() {
        return Err(ConnectError::new(
            Step::Dns,
            format!("{what}{host} has no address"),
        ));
    }
    let mut last = String::new();
    for addr in &addrs {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out after {STEP_TIMEOUT:?}"),
        }
    }
    Err(ConnectError::new(
        step,
        format!("cannot connect to {what}{host}:{port} ({last})"),
    ))
}

/// Ask an HTTP proxy for a tunnel to `host:port`.
async fn http_connect(
    mut stream: Box<dyn Io>,
    proxy: &ProxyConfig,
    host: &str,
    port: u16,
) -> Result<Box<dyn Io>, ConnectError> {
    let target = format!("{}:{port}", url_host(host));
    let mut req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: connectivity-agent/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, password)) = &proxy.auth {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose()));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    let io_err = |e: std::io::Error| {
        ConnectError::new(Step::Proxy, format!("proxy {}: {e}", proxy.address()))
    };
    stream.write_all(req.as_bytes()).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;

    // Read the response head byte-wise-buffered, but hand back exactly the
    // stream: BufReader's buffer must be empty when we return it, which holds
    // because the proxy sends nothing after the head until we speak TLS.
    let mut reader = BufReader::with_capacity(1, stream);
    let mut status_line = String::new();
    let mut head_len = 0usize;
    let read = async {
        reader.read_line(&mut status_line).await?;
        head_len += status_line.len();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).await?;
            head_len += n;
            if n == 0 || line == "\r\n" || line == "\n" || head_len > 16 * 1024 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(STEP_TIMEOUT, read).await {
        Err(_) => {
            return Err(ConnectError::new(
                Step::Proxy,
                format!("proxy {} did not answer CONNECT", proxy.address()),
            ));
        }
        Ok(Err(e)) => return Err(io_err(e)),
        Ok(Ok(())) => {}
    }
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    match code {
        "200" => Ok(reader.into_inner()),
        // 407 is the standard answer; some proxies (tinyproxy) answer 401.
        "407" | "401" => Err(ConnectError::permanent(
            Step::Proxy,
            format!(
                "proxy {} refused the proxy credentials (HTTP {code}); check proxy_USER/proxy_PASSWORD",
                proxy.address()
            ),
        )),
        "" => Err(ConnectError::new(
            Step::Proxy,
            format!(
                "proxy {} closed the connection without an answer",
                proxy.address()
            ),
        )),
        _ => Err(ConnectError::new(
            Step::Proxy,
            format!(
                "proxy {} refused CONNECT {target}: {}",
                proxy.address(),
                status_line.trim()
            ),
        )),
    }
}

/// rustls' words plus a short hint, for what [`diagnose`] does not explain
/// (a proxy's certificate, a chain that does not parse).
fn describe_tls_error(host: &str, e: &std::io::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") {
        "; the certificate is not trusted: put the CA certificate (PEM) of the control plane in oic_CA_FILE"
    } else if text.contains("NotValidForName") {
        "; the certificate does not name this host: use the host name the certificate was issued for in oic_URL"
    } else if text.contains("Expired") {
        "; the certificate has expired: renew it on the control plane"
    } else {
        ""
    };
    format!("TLS handshake with {host} failed: {text}{hint}")
}
