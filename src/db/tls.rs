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

use super::url::{SslMode, SslParams};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// The crypto provider of the whole binary: aws-lc-rs, which rustls (and so
/// the Google crates) already use.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the connector `plan` describes, reading its files now.
pub(crate) fn connector(plan: &Plan) -> Result<MakeRustlsConnect, TlsConfigError> {
    let mode = plan.mode;
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (&plan.roots, plan.verify) {
        (_, Verify::Nothing) | (None, _) => {
            Arc::new(NoVerification(provider.signature_verification_algorithms))
        }
        (Some(roots), verify) => {
            let store = Arc::new(load_roots(mode, roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Verifier(mode, e))?;
            if verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(mode, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &plan.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = load_certs(mode, "sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| pem_error(mode, "sslkey", key, "private key", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::Rustls(mode, e))?
        }
    };
    config.enable_sni = plan.sni;
    // As libpq 17+: required by servers that accept direct TLS, ignored by
    // older ones.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

fn load_roots(mode: SslMode, roots: &Roots) -> Result<RootCertStore, TlsConfigError> {
    let certs = match roots {
        Roots::File(path) => load_certs(mode, "sslrootcert", path)?,
        Roots::System => rustls_native_certs::load_native_certs().certs,
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added > 0 {
        return Ok(store);
    }
    Err(match roots {
        Roots::File(path) => TlsConfigError::BadPem {
            mode,
            param: "sslrootcert",
            path: path.clone(),
            what: "certificate",
        },
        Roots::System => TlsConfigError::NoSystemRoots(mode),
    })
}

fn load_certs(
    mode: SslMode,
    param: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(mode, param, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::BadPem {
            mode,
            param,
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn pem_error(
    mode: SslMode,
    param: &'static str,
    path: &Path,
    what: &'static str,
    e: rustls::pki_types::pem::Error,
) -> TlsConfigError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsConfigError::Unreadable {
            mode,
            param,
            path: path.into(),
            source,
        },
        _ => TlsConfigError::BadPem {
            mode,
            param,
            path: path.into(),
            what,
        },
    }
}

/// `require` without a root certificate: encrypted, any certificate. The
/// handshake signatures are still checked (the server holds the key of the
/// certificate it sent).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: webpki's full check, minus the host name. webpki checks the
/// name only after the chain has verified, so a name error means the chain
/// is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Wraps the connector to record, per connection attempt, the host whose
/// TLS handshake began: tokio-postgres calls the connector only once the
/// server has agreed to TLS, so "no handshake began" tells a server that
/// refused TLS from a failed handshake without reading error text.
#[derive(Clone)]
pub(crate) struct Tracked {
    inner: MakeRustlsConnect,
    handshake: Arc<Mutex<Option<String>>>,
}

impl Tracked {
    pub(crate) fn new(inner: MakeRustlsConnect) -> Self {
        Self {
            inner,
            handshake: Arc::default(),
        }
    }

    /// The host of the last handshake begun, if any.
    pub(crate) fn handshake_host(&self) -> Option<String> {
        self.handshake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Socket = tokio_postgres::Socket;
type Inner = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

impl MakeTlsConnect<Socket> for Tracked {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = TrackedConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TrackedConnect, Self::Error> {
        Ok(TrackedConnect {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)?,
            host: domain.to_owned(),
            handshake: self.handshake.clone(),
        })
    }
}

/// One host's TLS connect, recording that it began.
pub(crate) struct TrackedConnect {
    inner: Inner,
    host: String,
    handshake: Arc<Mutex<Option<String>>>,
}

impl TlsConnect<Socket> for TrackedConnect {
    type Stream = <Inner as TlsConnect<Socket>>::Stream;
    type Error = <Inner as TlsConnect<Socket>>::Error;
    type Future = <Inner as TlsConnect<Socket>>::Future;

    fn connect(self, stream: Socket) -> Self::Future {
        *self.handshake.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.host);
        self.inner.connect(stream)
    }
}

/// Why a connection over TLS failed, from the typed errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate does not chain to a trusted CA.
    UnknownCa,
    /// The certificate does not name the host connected to.
    HostMismatch(String),
    /// The server answered the TLS request with "no".
    ServerRefusedTls,
    /// Another TLS error (expired certificate, an alert from the server, ...).
    Handshake,
}

/// Classifies a connection error. `handshake` is the host whose handshake
/// began ([`Tracked::handshake_host`]).
pub(crate) fn classify(
    mode: SslMode,
    err: &tokio_postgres::Error,
    handshake: Option<String>,
) -> Option<TlsFailure> {
    if let Some(host) = handshake {
        let rustls = find_rustls(err)?;
        return Some(match rustls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                TlsFailure::UnknownCa
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsFailure::HostMismatch(host),
            _ => TlsFailure::Handshake,
        });
    }
    // No handshake began. With TLS required, the only failure that comes
    // with a cause that is neither I/O nor a server error is the server
    // saying it does not do TLS (configuration errors are caught before
    // connecting, by `super::config`; timeouts and closes have no cause).
    let required = mode >= SslMode::Require;
    let network_or_server = chain(err).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some()
            || e.downcast_ref::<tokio_postgres::error::DbError>().is_some()
    });
    (required && std::error::Error::source(err).is_some() && !network_or_server)
        .then_some(TlsFailure::ServerRefusedTls)
}

fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The rustls error inside a connection error. tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it, so look inside with `get_ref`.
fn find_rustls(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    chain(err).find_map(|e| {
        e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
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

    #[test]
    fn an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let p = params(Some(SslMode::VerifyFull), missing.to_str());
        let err = connector(&plan_of(&p, &[]).unwrap()).err().unwrap();
        let line = crate::error::Chain(&err).to_string();
        assert!(
            line.starts_with(&format!(
                "sslmode=verify-full: cannot read the sslrootcert file \"{}\": ",
                missing.display()
            )),
            "{line}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let p = params(Some(SslMode::VerifyCa), empty.to_str());
        let err = connector(&plan_of(&p, &[]).unwrap()).err().unwrap();
        assert!(
            err.to_string().contains("holds no usable PEM certificate"),
            "{err}"
        );
    }
}
