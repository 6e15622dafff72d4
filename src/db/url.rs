//! libpq's TLS parameters in a connection string, taken out before
//! tokio-postgres parses the rest.
//!
//! tokio-postgres knows `sslmode` only as `disable`, `prefer` and `require`,
//! and rejects `sslrootcert`, `sslcert`, `sslkey` and `sslsni` as unknown
//! options. [`split`] removes those five from either form of connection
//! string (a `postgres://` URL or `key=value` pairs) with the same grammar
//! tokio-postgres uses, and returns the rest for tokio-postgres to parse.
//! What the TLS parameters mean is decided in [`super::tls`].
//!
//! Errors here never quote the connection string: it may hold a password.
//!
//! (Over 400 lines because of its tests: the property tests against
//! tokio-postgres's own parser are half of the file.)

use std::borrow::Cow;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, else plaintext (libpq's default).
    Prefer,
    /// TLS; the certificate is checked only when a root certificate is set.
    Require,
    /// TLS; the server's certificate chain must lead to a trusted CA.
    VerifyCa,
    /// TLS; as `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The spelling in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<Self, UrlError> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return Err(UrlError::SslMode),
        })
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS parameters found in a connection string, as written (a later
/// occurrence of a key overrides an earlier one, as in libpq).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    /// `sslmode`, if given.
    pub mode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of CA certificates, or `system`.
    pub rootcert: Option<String>,
    /// `sslcert`: the client certificate (PEM).
    pub cert: Option<String>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub key: Option<String>,
    /// `sslsni`: whether to send the host name in the TLS handshake (default
    /// yes).
    pub sni: Option<bool>,
}

/// Why a connection string cannot be split. Never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The `key=value` syntax is broken.
    #[error("invalid connection string: {0}")]
    Syntax(&'static str),
    /// A percent-escape in a URL does not decode to UTF-8.
    #[error("invalid connection string: a percent-encoded parameter is not UTF-8")]
    Encoding,
    /// `sslmode` has an unknown value.
    #[error("sslmode must be one of disable, prefer, require, verify-ca, verify-full")]
    SslMode,
    /// `sslsni` is neither 0 nor 1.
    #[error("sslsni must be 0 or 1")]
    SslSni,
}

/// Splits a connection string into the TLS parameters and the rest (the same
/// form, for tokio-postgres).
pub fn split(conn: &str) -> Result<(String, SslParams), UrlError> {
    let mut ssl = SslParams::default();
    let rest = match url_prefix(conn) {
        Some(prefix_len) => split_url(conn, prefix_len, &mut ssl)?,
        None => split_pairs(conn, &mut ssl)?,
    };
    Ok((rest, ssl))
}

fn url_prefix(conn: &str) -> Option<usize> {
    ["postgres://", "postgresql://"]
        .iter()
        .find(|p| conn.starts_with(**p))
        .map(|p| p.len())
}

/// Takes `key`'s value into `ssl` if it is one of ours; returns whether it was.
fn take(ssl: &mut SslParams, key: &str, value: &str) -> Result<bool, UrlError> {
    match key {
        "sslmode" => ssl.mode = Some(SslMode::parse(value)?),
        "sslrootcert" => ssl.rootcert = Some(value.to_owned()),
        "sslcert" => ssl.cert = Some(value.to_owned()),
        "sslkey" => ssl.key = Some(value.to_owned()),
        "sslsni" => {
            ssl.sni = Some(match value {
                "1" => true,
                "0" => false,
                _ => return Err(UrlError::SslSni),
            })
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The URL form. Where the query starts is found as tokio-postgres finds it:
/// the credentials end at the first `@`, then the first `?` starts the query.
/// Parameters that stay are kept byte for byte.
fn split_url(conn: &str, prefix_len: usize, ssl: &mut SslParams) -> Result<String, UrlError> {
    let after_creds = conn[prefix_len..]
        .find('@')
        .map_or(prefix_len, |at| prefix_len + at + 1);
    let Some(q) = conn[after_creds..].find('?').map(|q| after_creds + q) else {
        return Ok(conn.to_owned());
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = &conn[q + 1..];
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            // tokio-postgres reports this ("unterminated parameter").
            kept.push(rest);
            break;
        };
        let (segment, next) = match rest[eq..].find('&') {
            Some(amp) => (&rest[..eq + amp], &rest[eq + amp + 1..]),
            None => (rest, ""),
        };
        let key = percent_decode(&segment[..eq])?;
        let value = percent_decode(&segment[eq + 1..])?;
        if !take(ssl, &key, &value)? {
            kept.push(segment);
        }
        rest = next;
    }
    let mut out = conn[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

/// Percent-decoding as in URLs (`%41` → `A`; a `%` not followed by two hex
/// digits stays as it is), then UTF-8.
fn percent_decode(s: &str) -> Result<Cow<'_, str>, UrlError> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| UrlError::Encoding)
}

/// The `key=value` form, tokenised with tokio-postgres's grammar: keys end at
/// whitespace or `=`, values are bare (backslash escapes the next character)
/// or single-quoted (backslash escapes too). The pairs that stay are written
/// back quoted, which tokio-postgres reads as the same values.
fn split_pairs(conn: &str, ssl: &mut SslParams) -> Result<String, UrlError> {
    let mut kept = Vec::new();
    for (key, value) in parse_pairs(conn)? {
        if !take(ssl, key, &value)? {
            kept.push(format!("{key}={}", quote_value(&value)));
        }
    }
    Ok(kept.join(" "))
}

/// Parses `key=value` pairs in order.
pub(crate) fn parse_pairs(conn: &str) -> Result<Vec<(&str, String)>, UrlError> {
    let mut pairs = Vec::new();
    let mut it = conn.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Ok(pairs);
        };
        let mut end = conn.len();
        while let Some(&(i, c)) = it.peek() {
            if c.is_whitespace() || c == '=' {
                end = i;
                break;
            }
            it.next();
        }
        let key = &conn[start..end];
        if key.is_empty() {
            return Err(UrlError::Syntax("a parameter has no name"));
        }
        skip_ws(&mut it);
        if it.next().map(|(_, c)| c) != Some('=') {
            return Err(UrlError::Syntax("a parameter name is not followed by `=`"));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(UrlError::Syntax("a quoted value is not terminated")),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(it.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(UrlError::Syntax("a parameter has no value"));
            }
        }
        pairs.push((key, value));
    }
}

/// A value single-quoted, with `\` and `'` escaped.
pub(crate) fn quote_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn pg(s: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(s).unwrap()
    }

    #[test]
    fn url_params_are_taken_out_and_the_rest_kept_verbatim() {
        let (rest, ssl) = split(
            "postgres://u:p%3Fw@db.example.com:6543/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem&sslsni=0",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example.com:6543/app?application_name=x"
        );
        assert_eq!(
            ssl,
            SslParams {
                mode: Some(SslMode::VerifyFull),
                rootcert: Some("/etc/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
                sni: Some(false),
            }
        );
        assert_eq!(pg(&rest).get_password(), Some(&b"p?w"[..]));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, ssl) = split("postgresql://u:a?b@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://u:a?b@h/db");
        assert_eq!(ssl.mode, Some(SslMode::Require));
        // A URL with nothing of ours is untouched.
        let url = "postgres://u:a?b=c@h/db";
        assert_eq!(split(url).unwrap().0, url);
    }

    #[test]
    fn key_value_values_survive_requoting() {
        let (rest, ssl) = split(
            "host=h  user = u password='it\\'s' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=d\\ x",
        )
        .unwrap();
        assert_eq!(ssl.mode, Some(SslMode::VerifyCa));
        assert_eq!(ssl.rootcert.as_deref(), Some("/a b/ca.pem"));
        let cfg = pg(&rest);
        assert_eq!(cfg.get_password(), Some(&b"it's"[..]));
        assert_eq!(cfg.get_dbname(), Some("d x"));
        assert_eq!(cfg.get_user(), Some("u"));
    }

    #[test]
    fn bad_values_are_refused_without_quoting_them() {
        assert_eq!(
            split("postgres://h/d?sslmode=verify_full"),
            Err(UrlError::SslMode)
        );
        assert_eq!(split("sslmode=allow host=h"), Err(UrlError::SslMode));
        assert_eq!(split("host=h sslsni=yes"), Err(UrlError::SslSni));
        assert!(split("host=h password='unterminated").is_err());
        assert!(split("host=h password").is_err());
        // No doubled quotes in this grammar: the value ends at the second one.
        assert!(split("host=h password='it''s' user=u").is_err());
    }

    #[test]
    fn a_later_key_overrides_an_earlier_one() {
        let (_, ssl) = split("sslmode=require host=h sslmode=disable").unwrap();
        assert_eq!(ssl.mode, Some(SslMode::Disable));
    }

    const KEYS: &[&str] = &[
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslsni",
        "user",
        "password",
        "dbname",
        "application_name",
    ];

    fn value_for(key: &str) -> BoxedStrategy<String> {
        match key {
            "sslmode" => prop::sample::select(vec![
                "disable",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ])
            .prop_map(str::to_owned)
            .boxed(),
            "sslsni" => prop::sample::select(vec!["0", "1"])
                .prop_map(str::to_owned)
                .boxed(),
            _ => "[ -~é]{1,12}".boxed(),
        }
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(
            prop::sample::select(KEYS.to_vec())
                .prop_flat_map(|k| (Just(k.to_owned()), value_for(k))),
            0..8,
        )
    }

    /// What the pairs mean, the oracle: ours into `SslParams` (last wins),
    /// the others into a tokio-postgres `Config`.
    fn oracle(pairs: &[(String, String)]) -> (tokio_postgres::Config, SslParams) {
        let mut ssl = SslParams::default();
        let mut others = vec!["host='h'".to_owned()];
        for (k, v) in pairs {
            if !take(&mut ssl, k, v).unwrap() {
                others.push(format!("{k}={}", quote_value(v)));
            }
        }
        (pg(&others.join(" ")), ssl)
    }

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn key_value_split_means_what_the_pairs_mean(pairs in pairs(), bare in any::<bool>()) {
            let written: Vec<String> = std::iter::once("host=h".to_owned())
                .chain(pairs.iter().map(|(k, v)| {
                    let simple = bare && !v.is_empty() && !v.contains(['\'', ' ', '\\']);
                    if simple { format!("{k}={v}") } else { format!("{k} = {}", quote_value(v)) }
                }))
                .collect();
            let (rest, ssl) = split(&written.join("  ")).unwrap();
            let (want_cfg, want_ssl) = oracle(&pairs);
            prop_assert_eq!(ssl, want_ssl);
            prop_assert_eq!(pg(&rest), want_cfg);
        }

        #[test]
        fn url_split_is_the_url_without_our_params(pairs in pairs(), password in "[ -~]{0,12}") {
            let base = format!("postgres://me:{}@h/db", encode(&password));
            let query = |all: bool| -> String {
                pairs.iter()
                    .filter(|(k, _)| all || !KEYS[..5].contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            };
            let (rest, ssl) = split(&format!("{base}?{}", query(true))).unwrap();
            prop_assert_eq!(ssl, oracle(&pairs).1);
            prop_assert_eq!(pg(&rest), pg(&format!("{base}?{}", query(false))));
        }

        #[test]
        fn key_value_parsing_never_panics(s in "[ -~]{0,40}") {
            let _ = split(&s);
        }
    }
}
