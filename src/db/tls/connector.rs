//! The rustls connector for a [`Plan`], and the certificate verifiers
//! libpq's modes need beyond webpki's full check.

use super::{Plan, Roots, TlsConfigError, Verify};
use crate::db::url::SslMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

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
        (_, Verify::Nothing) | (None, _) => Arc::new(Lenient {
            chain: None,
            algorithms: provider.signature_verification_algorithms,
        }),
        (Some(roots), verify) => {
            let store = Arc::new(load_roots(mode, roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Verifier(mode, e))?;
            if verify == Verify::Chain {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    algorithms: provider.signature_verification_algorithms,
                })
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

/// The verifier for libpq's modes below `verify-full`: `require` without a
/// root certificate checks no certificate at all (encrypted, any
/// certificate); `verify-ca` runs webpki's full check minus the host name
/// (webpki checks the name only after the chain has verified, so a name error
/// means the chain is good). Both still check the handshake signatures: the
/// server holds the key of the certificate it sent.
#[derive(Debug)]
struct Lenient {
    /// The chain check, `None` for no certificate check.
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::*;
    use crate::db::url::SslParams;

    fn params(mode: SslMode, rootcert: &Path) -> SslParams {
        SslParams {
            mode: Some(mode),
            rootcert: rootcert.to_str().map(str::to_owned),
            ..SslParams::default()
        }
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let p = params(SslMode::VerifyFull, &missing);
        let err = connector(&plan(&p, None, |_| false).unwrap())
            .err()
            .unwrap();
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
        let p = params(SslMode::VerifyCa, &empty);
        let err = connector(&plan(&p, None, |_| false).unwrap())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("holds no usable PEM certificate"),
            "{err}"
        );
    }
}
