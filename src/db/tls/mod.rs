//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`, on rustls (the stack the Google crates already
//! bring, with the same aws-lc-rs provider) through `tokio-postgres-rustls`.
//!
//! What libpq does, and so what this does:
//!
//! | sslmode       | TLS                        | server certificate checked          |
//! |---------------|----------------------------|-------------------------------------|
//! | `disable`     | never                      | -                                   |
//! | `prefer`      | if the server offers it, else plaintext; a failed handshake is retried in plaintext | chain, only if a root certificate is set |
//! | `require`     | always                     | chain, only if a root certificate is set |
//! | `verify-ca`   | always                     | chain                               |
//! | `verify-full` | always                     | chain and host name                 |
//!
//! The root certificate is `sslrootcert`, else `~/.postgresql/root.crt` if it
//! exists; `sslrootcert=system` means the OS trust store, makes
//! `verify-full` the default and refuses weaker modes (libpq 16+). A client
//! certificate is `sslcert`/`sslkey`, else `~/.postgresql/postgresql.crt` and
//! `.key` if they exist. One difference, on purpose: a file named explicitly
//! that cannot be read is an error naming it (libpq skips a missing
//! `sslcert` silently). TLS is never used over Unix sockets, as in libpq.
//!
//! Files are read once, when the configuration is built (at start-up).
//!
//! * this file: what the parameters mean ([`plan`], pure).
//! * [`connector`]: the rustls connector for a plan, and the certificate
//!   verifiers libpq's modes need.
//! * [`failure`]: why a TLS connection failed, from typed errors.

mod connector;
mod failure;

pub(crate) use connector::connector;
pub use failure::TlsFailure;
pub(crate) use failure::{Tracked, classify};

use super::url::{SslMode, SslParams};
use std::path::{Path, PathBuf};

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Not at all (the connection is encrypted, not authenticated).
    Nothing,
    /// The chain must lead to a trusted CA; any host name.
    Chain,
    /// The chain, and the certificate must name the host.
    ChainAndHost,
}

/// Where the trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "sslrootcert \"{}\"", p.display()),
            Self::System => f.write_str("the system trust store (sslrootcert=system)"),
        }
    }
}

/// What a connection string asks for, resolved as libpq resolves it. Pure:
/// see [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The effective mode.
    pub mode: SslMode,
    pub verify: Verify,
    pub roots: Option<Roots>,
    /// Client certificate chain and key files.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Send the host name (SNI).
    pub sni: bool,
}

/// A TLS setting that cannot work. Names `sslmode`, and the file when there
/// is one; never the connection string.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// libpq 16+ refuses `sslrootcert=system` with anything but verify-full.
    #[error(
        "sslmode={0} may not be used with sslrootcert=system: use sslmode=verify-full (as libpq does)"
    )]
    WeakWithSystemRoots(SslMode),
    /// `verify-ca`/`verify-full` without any root certificate.
    #[error(
        "sslmode={0} needs the CA certificate(s) to trust: set sslrootcert to a PEM file, or to `system` for the OS trust store ({1} does not exist)"
    )]
    NoRootCert(SslMode, String),
    /// A file cannot be read.
    #[error("sslmode={mode}: cannot read the {param} file \"{}\"", path.display())]
    Unreadable {
        /// The effective sslmode.
        mode: SslMode,
        /// `sslrootcert`, `sslcert` or `sslkey`.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("sslmode={mode}: the {param} file \"{}\" holds no usable PEM {what}", path.display())]
    BadPem {
        /// The effective sslmode.
        mode: SslMode,
        /// `sslrootcert`, `sslcert` or `sslkey`.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The OS trust store has no certificates.
    #[error("sslmode={0}: sslrootcert=system, but the system trust store has no CA certificates")]
    NoSystemRoots(SslMode),
    /// rustls refused the trusted certificates.
    #[error("sslmode={0}: cannot use the CA certificates")]
    Verifier(SslMode, #[source] rustls::client::VerifierBuilderError),
    /// rustls refused the configuration (e.g. a key that does not match
    /// the certificate).
    #[error("sslmode={0}: invalid TLS client configuration")]
    Rustls(SslMode, #[source] rustls::Error),
}

/// Resolves `params` as libpq does. `home` is the user's home directory (for
/// the `~/.postgresql` defaults); `exists` tells whether a default file is
/// there. Unix-socket connections never get here (see [`super::Config`]).
pub(crate) fn plan(
    params: &SslParams,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Plan, TlsConfigError> {
    let system = params.rootcert.as_deref() == Some("system");
    let mode = match params.mode {
        Some(m) if system && m != SslMode::VerifyFull => {
            return Err(TlsConfigError::WeakWithSystemRoots(m));
        }
        Some(m) => m,
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let dot = home.map(|h| h.join(".postgresql"));
    let default = |name: &str| dot.as_ref().map(|d| d.join(name)).filter(|p| exists(p));
    let roots = match params.rootcert.as_deref() {
        Some("system") => Some(Roots::System),
        Some(path) => Some(Roots::File(path.into())),
        None => default("root.crt").map(Roots::File),
    };
    let verify = match (mode, &roots) {
        (SslMode::VerifyFull, Some(_)) => Verify::ChainAndHost,
        (SslMode::VerifyCa, Some(_)) | (SslMode::Prefer | SslMode::Require, Some(_)) => {
            Verify::Chain
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            let where_ = dot.map_or_else(
                || "~/.postgresql/root.crt".to_owned(),
                |d| d.join("root.crt").display().to_string(),
            );
            return Err(TlsConfigError::NoRootCert(mode, where_));
        }
        _ => Verify::Nothing,
    };
    let cert = params
        .cert
        .as_deref()
        .map(PathBuf::from)
        .or_else(|| default("postgresql.crt"));
    let client = cert.map(|cert| {
        let key = params.key.as_deref().map_or_else(
            || {
                dot.as_ref()
                    .map_or_else(|| cert.with_extension("key"), |d| d.join("postgresql.key"))
            },
            PathBuf::from,
        );
        (cert, key)
    });
    Ok(Plan {
        mode,
        verify,
        roots,
        client,
        sni: params.sni.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: Option<SslMode>, rootcert: Option<&str>) -> SslParams {
        SslParams {
            mode,
            rootcert: rootcert.map(str::to_owned),
            ..SslParams::default()
        }
    }

    fn plan_of(p: &SslParams, files: &[&str]) -> Result<Plan, TlsConfigError> {
        plan(p, Some(Path::new("/home/u")), |f| {
            files.iter().any(|x| Path::new(x) == f)
        })
    }

    #[test]
    fn modes_verify_as_libpq_does() {
        use SslMode::*;
        let cases = [
            // (mode, sslrootcert, default root.crt exists, verify)
            (None, None, false, Prefer, Verify::Nothing),
            (Some(Prefer), Some("/ca.pem"), false, Prefer, Verify::Chain),
            (Some(Require), None, false, Require, Verify::Nothing),
            // libpq: require with a root certificate behaves like verify-ca.
            (
                Some(Require),
                Some("/ca.pem"),
                false,
                Require,
                Verify::Chain,
            ),
            (Some(Require), None, true, Require, Verify::Chain),
            (
                Some(VerifyCa),
                Some("/ca.pem"),
                false,
                VerifyCa,
                Verify::Chain,
            ),
            (
                Some(VerifyFull),
                None,
                true,
                VerifyFull,
                Verify::ChainAndHost,
            ),
            (
                None,
                Some("system"),
                false,
                VerifyFull,
                Verify::ChainAndHost,
            ),
            (
                Some(VerifyFull),
                Some("system"),
                false,
                VerifyFull,
                Verify::ChainAndHost,
            ),
        ];
        for (mode, root, default_exists, want_mode, want) in cases {
            let files: &[&str] = if default_exists {
                &["/home/u/.postgresql/root.crt"]
            } else {
                &[]
            };
            let got = plan_of(&params(mode, root), files).unwrap();
            assert_eq!(
                (got.mode, got.verify),
                (want_mode, want),
                "{mode:?} {root:?}"
            );
        }
    }

    #[test]
    fn impossible_combinations_name_sslmode() {
        for weak in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let err = plan_of(&params(Some(weak), Some("system")), &[]).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("sslmode={weak} ")),
                "{err}"
            );
        }
        let err = plan_of(&params(Some(SslMode::VerifyFull), None), &[]).unwrap_err();
        assert!(
            err.to_string().contains("sslmode=verify-full needs"),
            "{err}"
        );
        assert!(
            err.to_string().contains("/home/u/.postgresql/root.crt"),
            "{err}"
        );
    }

    #[test]
    fn client_certificates_default_as_libpq() {
        let p = params(Some(SslMode::Require), None);
        assert_eq!(plan_of(&p, &[]).unwrap().client, None);
        let got = plan_of(&p, &["/home/u/.postgresql/postgresql.crt"]).unwrap();
        assert_eq!(
            got.client,
            Some((
                "/home/u/.postgresql/postgresql.crt".into(),
                "/home/u/.postgresql/postgresql.key".into()
            ))
        );
        let explicit = SslParams {
            cert: Some("/c.pem".into()),
            key: Some("/k.pem".into()),
            ..p
        };
        assert_eq!(
            plan_of(&explicit, &[]).unwrap().client,
            Some(("/c.pem".into(), "/k.pem".into()))
        );
    }
}
