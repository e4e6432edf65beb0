//! Who may ask, and the headers every answer carries.
//!
//! - With a token, every request must carry it: `Authorization: Bearer <token>` (what
//!   Prometheus and scripts send), or HTTP Basic with the token as the password (what a
//!   browser sends after its login prompt; `EventSource` cannot set headers, but the
//!   browser resends Basic credentials by itself). Anything else gets 401. The check
//!   compares blake3 digests of the offered and the expected token, and `blake3::Hash`
//!   compares in constant time, so neither a wrong byte's position nor the token's
//!   length shows in the timing; a missing header is checked the same way as a wrong one.
//! - Without a token the server listens on loopback only (`check_bind`), and answers only
//!   requests whose `Host` is a loopback name or address: a web page elsewhere cannot use
//!   DNS rebinding to read the faucet through the operator's browser.
//! - Every answer says `nosniff`, may not be framed, sends no referrer, and runs only
//!   the server's own scripts and styles (CSP).

use super::App;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The access rule of one server.
pub(crate) struct Auth {
    /// blake3 of the token, when there is one.
    token: Option<blake3::Hash>,
    /// The address it listens on (a Host naming it is accepted without a token).
    bound: SocketAddr,
}

/// The page's Content-Security-Policy: only this server's scripts, styles and images.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

impl Auth {
    /// The rule for `token` (none: loopback clients only) on `bound`.
    pub fn new(token: Option<&str>, bound: SocketAddr) -> Auth {
        Auth {
            token: token.map(|t| blake3::hash(t.as_bytes())),
            bound,
        }
    }

    /// Whether the request's headers let it through.
    fn allows(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        match &self.token {
            Some(expected) => {
                let offered = offered_token(headers).unwrap_or_default();
                // Constant time: blake3::Hash's equality does not stop at the first
                // differing byte, and both sides are 32 bytes whatever was offered.
                if blake3::hash(offered.as_bytes()) == *expected {
                    Ok(())
                } else {
                    Err(Refusal::Unauthorized)
                }
            }
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if host_is_local(host, self.bound) {
                    Ok(())
                } else {
                    Err(Refusal::Host(host.to_string()))
                }
            }
        }
    }
}

enum Refusal {
    Unauthorized,
    Host(String),
}

/// The token a request offers: the Bearer credentials, or a Basic password.
fn offered_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some(password.to_string())
    } else {
        None
    }
}

/// Whether a `Host` header names this machine's loopback: `localhost`, a loopback
/// address, or the address the server is bound to.
fn host_is_local(host: &str, bound: SocketAddr) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8700
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == bound.ip(),
        Err(_) => false,
    }
}

/// The middleware: refuses what [`Auth`] does not allow, then adds the security headers.
pub(crate) async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let mut response = match app.auth.allows(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(Refusal::Unauthorized) => {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: this faucet needs its token (Authorization: Bearer <token>, \
                 or the token as the password when the browser asks)\n",
            )
                .into_response();
            let h = r.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"perpetual faucet\", charset=\"UTF-8\""),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"perpetual faucet\""),
            );
            r
        }
        Err(Refusal::Host(host)) => (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "421 Misdirected Request: this faucet answers only requests to localhost (Host: {host:?}); \
                 give it a token (--token) to serve other names\n"
            ),
        )
            .into_response(),
    };
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn token_by_bearer_or_basic_password() {
        let auth = Auth::new(Some("s3cret"), "0.0.0.0:8700".parse().unwrap());
        let basic = |userpass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(userpass)
            )
        };
        for (case, header, ok) in [
            ("bearer", Some("Bearer s3cret".to_string()), true),
            ("bearer, any case", Some("bearer s3cret".to_string()), true),
            ("basic password", Some(basic("anyone:s3cret")), true),
            ("missing", None, false),
            ("wrong", Some("Bearer s3cre".to_string()), false),
            ("longer", Some("Bearer s3cret!".to_string()), false),
            ("empty", Some("Bearer ".to_string()), false),
            ("basic user only", Some(basic("s3cret:")), false),
            ("other scheme", Some("Token s3cret".to_string()), false),
        ] {
            let h = headers(header.as_deref(), "example.com");
            assert_eq!(auth.allows(&h).is_ok(), ok, "{case}");
        }
    }

    #[test]
    fn without_a_token_only_local_hosts() {
        let auth = Auth::new(None, "127.0.0.1:8700".parse().unwrap());
        for (host, ok) in [
            ("localhost:8700", true),
            ("LOCALHOST", true),
            ("app.localhost:8700", true),
            ("127.0.0.1:8700", true),
            ("127.0.0.2", true),
            ("[::1]:8700", true),
            ("evil.example:8700", false),
            ("10.0.0.5:8700", false),
            ("", false),
        ] {
            assert_eq!(auth.allows(&headers(None, host)).is_ok(), ok, "{host}");
        }
    }
}
