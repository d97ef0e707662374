//! The connection URL a minted credential is injected as: the role's admin URL with its user
//! and password replaced by the lease's (`postgresql://custos_…:…@host:5432/app`).

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::error::{CredentialError, EngineKind};
use crate::principal::PrincipalName;

/// Query parameters that would carry the admin's identity along; they are dropped.
const IDENTITY_PARAMS: [&str; 4] = ["user", "username", "password", "passfile"];

/// `admin_url` (the role's admin connection) with `principal` and `password` as its user
/// information, percent-encoded, and any user or password query parameter dropped. The scheme,
/// host, port, database and other parameters are kept.
///
/// # Errors
/// [`CredentialError::InvalidConfig`] when the admin URL has no `scheme://host` (the message
/// never carries the URL).
pub fn connection_url(
    engine: EngineKind,
    admin_url: &SecretString,
    principal: &PrincipalName,
    password: &SecretString,
) -> Result<SecretString, CredentialError> {
    let invalid = |why: &str| CredentialError::InvalidConfig {
        engine,
        reason: format!("the admin connection URL {why}"),
    };
    let admin = admin_url.expose_secret();
    let (scheme, rest) = admin
        .split_once("://")
        .ok_or_else(|| invalid("has no `scheme://`"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(invalid("names no host"));
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or_default();
            !kv.is_empty() && !IDENTITY_PARAMS.contains(&key.to_ascii_lowercase().as_str())
        })
        .collect();
    let mut url = Zeroizing::new(String::with_capacity(admin.len() + 64));
    url.push_str(scheme);
    url.push_str("://");
    percent_encode_into(&mut url, principal.as_str());
    url.push(':');
    percent_encode_into(&mut url, password.expose_secret());
    url.push('@');
    url.push_str(host);
    url.push_str(path);
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    Ok(SecretString::from(url.as_str()))
}

/// Appends `s` with everything but RFC 3986 unreserved characters percent-encoded.
fn percent_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

/// `s` percent-encoded as [`connection_url`] encodes user information.
pub fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    percent_encode_into(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(admin: &str, password: &str) -> Result<String, CredentialError> {
        let principal = PrincipalName::for_lease("abc123").expect("principal");
        connection_url(
            EngineKind::Postgres,
            &SecretString::from(admin),
            &principal,
            &SecretString::from(password),
        )
        .map(|u| u.expose_secret().to_owned())
    }

    #[test]
    fn the_lease_replaces_the_admin_and_the_rest_is_kept() {
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/app", "pw").expect("url"),
            "postgres://custos_abc123:pw@127.0.0.1:5432/app"
        );
        assert_eq!(
            url(
                "postgresql://admin:s3cret@db.internal/app?sslmode=require&password=x&user=admin",
                "p/w@:x"
            )
            .expect("url"),
            "postgresql://custos_abc123:p%2Fw%40%3Ax@db.internal/app?sslmode=require"
        );
        assert_eq!(
            url("redis://default:pw@[::1]:6379/0", "pw").expect("ipv6"),
            "redis://custos_abc123:pw@[::1]:6379/0"
        );
        assert_eq!(
            url("mysql://root@127.0.0.1:3306", "pw").expect("no path"),
            "mysql://custos_abc123:pw@127.0.0.1:3306"
        );
    }

    #[test]
    fn a_url_without_scheme_or_host_is_refused_without_echoing_it() {
        for bad in ["127.0.0.1:5432/app", "postgres://user:hunter2@/app"] {
            let err = url(bad, "pw").expect_err(bad).to_string();
            assert!(
                !err.contains("hunter2") && !err.contains("127.0.0.1"),
                "{err}"
            );
        }
    }
}
