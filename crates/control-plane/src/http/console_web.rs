//! The web console at `/console/`: the page's files (built into the
//! binary), login with a console token, the session cookie, logout, and the
//! security headers every console response carries.
//!
//! The page is a client of the console API (`/api/v1/...`). A browser is
//! authenticated there by its session cookie instead of a bearer token
//! ([`session_user`], called by the API's middleware); with a cookie, every
//! request that is not a `GET` must carry the session's CSRF token in
//! `X-CSRF-Token`, which a page of another origin cannot read, so a cookie
//! alone never changes anything. `docs/CONSOLE.md` has the whole design.

use super::api_error::ApiError;
use super::console::ConsoleUser;
use crate::console_sessions::{SESSION_TTL, SessionInfo, same_token};
use crate::state::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use connectivity_common::timefmt;
use connectivity_protocol::secret::Secret;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The session cookie. `__Host-` makes browsers refuse it unless it is
/// `Secure`, for `Path=/` and without `Domain`: no subdomain can set it.
pub(crate) const COOKIE: &str = "__Host-cp_session";
/// The header that carries the session's CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A login body holds a token and nothing else.
const MAX_LOGIN_BYTES: usize = 4096;

/// The page's policy: only its own files, no inline script or style, no
/// framing, no plugins, forms only to itself.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// One file of the page, built into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `crates/control-plane/console/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("views.js", JS),
    asset!("jobs.js", JS),
    asset!("streams.js", JS),
    asset!("form.js", JS),
    asset!("chart.js", JS),
];

/// `/console/...`: the page, login, logout, and the session.
pub(crate) fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|h: HeaderMap| async move { asset("index.html", &h) }),
        )
        .route(
            "/console/login",
            post(login).layer(DefaultBodyLimit::max(MAX_LOGIN_BYTES)),
        )
        .route("/console/logout", post(logout))
        .route("/console/session", get(session))
        .route(
            "/console/{file}",
            get(|Path(f): Path<String>, h: HeaderMap| async move { asset(&f, &h) }),
        )
        .layer(middleware::from_fn(security_headers))
        .with_state(shared)
}

/// The headers of every console response, API answers to the page included.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The ETag of every asset: a hash of the binary's copy, so a new build is
/// fetched again and an unchanged one costs a 304.
fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = crate::hashes::sha256(a.body);
                let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found(format!("no console file {name:?}")).into_response();
    };
    let (a, etag) = (&ASSETS[i], &etags()[i]);
    // Revalidated on every load: small files, and an upgrade shows at once.
    let cache = (header::CACHE_CONTROL, "no-cache");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [cache, (header::ETAG, etag)]).into_response();
    }
    (
        [
            cache,
            (header::CONTENT_TYPE, a.content_type),
            (header::ETAG, etag),
        ],
        a.body,
    )
        .into_response()
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Whether a request with this method needs the CSRF token.
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session of a request, checked: its cookie names a live session
/// and, unless it only reads, `X-CSRF-Token` is that session's token.
fn checked_session(
    shared: &Shared,
    req_headers: &HeaderMap,
    method: &Method,
) -> Result<(String, SessionInfo), ApiError> {
    let id = cookie(req_headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not logged in; log in at /console/ or send \"Authorization: Bearer <console token>\"",
        )
    })?;
    let info = shared.console_sessions.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the console session has expired or was logged out; log in again at /console/",
        )
    })?;
    if changes_state(method) {
        let sent = req_headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_token(sent, &info.csrf) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header: a request that changes something must carry the session's CSRF token (GET /console/session)",
            ));
        }
    }
    Ok((id.to_owned(), info))
}

/// For the API's middleware: `None` when the request carries an
/// `Authorization` header or no session cookie (the bearer token check
/// applies), else the console user of its session, or why it is refused.
pub(crate) fn session_user(
    shared: &Shared,
    req: &Request,
) -> Option<Result<ConsoleUser, ApiError>> {
    if req.headers().contains_key(header::AUTHORIZATION) || cookie(req.headers()).is_none() {
        return None;
    }
    Some(checked_session(shared, req.headers(), req.method()).map(|(_, s)| ConsoleUser(s.name)))
}

/// Whether the session that opened a stream is still live (the event
/// stream ends at logout or expiry). Bearer-token streams have no session.
pub(crate) fn session_alive(shared: &Shared, session_id: Option<&str>) -> bool {
    session_id.is_none_or(|id| shared.console_sessions.get(id).is_some())
}

/// The session id of a cookie-authenticated request, for [`session_alive`].
pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    cookie(headers).map(str::to_owned)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    token: Secret,
}

/// `{"name", "csrf", "expires_at"}`: what the page keeps in memory.
fn session_body(info: &SessionInfo) -> serde_json::Value {
    json!({"name": info.name, "csrf": info.csrf, "expires_at": timefmt::rfc3339(info.expires_at)})
}

fn set_cookie(value: &str, max_age: u64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"),
    )
}

/// `POST /console/login` with `{"token": "<console token>"}` (JSON only: a
/// form of another site cannot send it). The token is checked like a
/// bearer token, failures counted by the login limiter.
async fn login(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send {\"token\": \"<console token>\"} as application/json",
        )
        .into_response();
    }
    let Ok(LoginBody { token }) = serde_json::from_slice::<LoginBody>(&body) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "send {\"token\": \"<console token>\"} and nothing else",
        )
        .into_response();
    };
    let mut as_bearer = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) else {
        return ApiError::unauthorized("invalid console token", "Bearer realm=\"console\"")
            .into_response();
    };
    as_bearer.insert(header::AUTHORIZATION, value);
    let name = match shared.auth.console(&as_bearer, remote.ip()).await {
        Ok(name) => name,
        Err(err) => {
            tracing::info!(%remote, %err, "console login refused");
            let mut e = ApiError::from_auth(&err, "Bearer realm=\"console\"");
            e.challenge = None;
            return e.into_response();
        }
    };
    let Some(session) = shared.console_sessions.create(&name) else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the system random number generator failed",
        )
        .into_response();
    };
    tracing::info!(%remote, token = %name, "console login");
    (
        [set_cookie(session.id.expose(), SESSION_TTL.as_secs())],
        axum::Json(session_body(&session.info)),
    )
        .into_response()
}

/// `POST /console/logout`: ends the session on the server and clears the
/// cookie. Needs the CSRF token like any change.
async fn logout(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match checked_session(&shared, req.headers(), req.method()) {
        Ok((id, info)) => {
            shared.console_sessions.remove(&id);
            tracing::info!(token = %info.name, "console logout");
            (StatusCode::NO_CONTENT, [set_cookie("", 0)]).into_response()
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            (StatusCode::NO_CONTENT, [set_cookie("", 0)]).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /console/session`: who is logged in and the CSRF token, for a page
/// that was reloaded (it keeps neither in the browser's storage).
async fn session(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match checked_session(&shared, req.headers(), req.method()) {
        Ok((_, info)) => axum::Json(session_body(&info)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_listed_and_not_empty() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("console dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "every file of console/ is served, and only those"
        );
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(html.contains("<script type=\"module\" src=\"app.js\"></script>"));
        assert_eq!(html.matches("<script").count(), 1, "one external script");
        assert!(!html.contains("<style") && !html.contains("style=") && !html.contains(" on"));
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-cp_session=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        assert_eq!(cookie(&HeaderMap::new()), None);
        assert!(!changes_state(&Method::GET) && changes_state(&Method::POST));
    }
}
