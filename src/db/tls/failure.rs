//! Why a TLS connection failed, from typed errors: rustls's certificate
//! errors, and whether a handshake began at all.

use super::SslMode;
use rustls::CertificateError;
use std::sync::{Arc, Mutex};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

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
