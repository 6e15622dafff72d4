//! TLS for the tests: a CA, a server certificate for `localhost` and a client certificate, made
//! at test time with rcgen; a second CA nobody trusts; and turning TLS on in a dedicated cluster
//! with a `pg_hba.conf` of `hostssl` lines.
//!
//! TLS is switched on in a running [`DedicatedPostgres`] through SQL (`ALTER SYSTEM`, the files
//! written into its data directory, `pg_reload_conf()`), so the shared cluster starter needs no
//! TLS options.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::common::{DedicatedPostgres, wait_until};

/// The user that logs in with a client certificate (`hostssl ... cert`).
pub const CERT_USER: &str = "cert_user";

/// Certificates and keys as PEM files in a temporary directory.
pub struct Pki {
    _dir: TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: String,
    server_key: String,
    ca_pem: String,
}

impl Pki {
    /// A CA; a server certificate for the DNS name `localhost` only (so connecting by 127.0.0.1
    /// under verify-full is a host name mismatch); a client certificate for [`CERT_USER`].
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("miniscan-pki-")
            .tempdir()
            .expect("create a directory for certificates");
        let ca = new_ca("mini-scan test CA");
        let other = new_ca("some other CA").pem();

        let server_key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = params
            .signed_by(&server_key, &ca)
            .expect("sign the server certificate");

        let client_key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, CERT_USER);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params
            .signed_by(&client_key, &ca)
            .expect("sign the client certificate");

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            other_ca: write("other-ca.pem", &other),
            client_cert: write("client.pem", &client.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            ca_pem: ca.pem(),
            _dir: dir,
        }
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("generate a key");
    CertifiedIssuer::self_signed(ca_params(name), key).expect("self-sign a CA")
}

/// `pg_hba.conf` for a TLS cluster, first match wins: the harness's superuser from loopback with
/// or without TLS (TestDb and row queries connect in plaintext); [`CERT_USER`] by client
/// certificate; everyone else by password, over TLS only.
pub const HBA: &str = "\
host      all  postgres  127.0.0.1/32  trust
hostssl   all  cert_user 127.0.0.1/32  cert
hostssl   all  all       127.0.0.1/32  scram-sha-256
hostnossl all  all       127.0.0.1/32  reject
";

/// Turns TLS on in `pg` with `pki`'s server certificate and the `hba` rules, and waits until a
/// TLS connection works.
pub async fn enable_tls(pg: &DedicatedPostgres, pki: &Pki, hba: &str) {
    let admin = crate::common::postgres::connect(&pg.admin_url())
        .await
        .expect("connect to the dedicated cluster");
    let show = |name: &'static str| {
        let admin = &admin;
        async move {
            let row = admin.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
            PathBuf::from(row.get::<_, String>(0))
        }
    };
    let data = show("data_directory").await;
    let hba_file = show("hba_file").await;
    let owner = std::fs::metadata(&data).expect("stat the data directory");
    for (path, text) in [
        (data.join("server.crt"), pki.server_cert.as_str()),
        (data.join("server.key"), &pki.server_key),
        (data.join("root.crt"), &pki.ca_pem),
        (hba_file, hba),
    ] {
        write_owned(&path, text, owner.uid(), owner.gid());
    }
    // One statement per query: ALTER SYSTEM refuses to run in a transaction block.
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'root.crt'",
        "SELECT pg_reload_conf()",
    ] {
        admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    }
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        port(pg),
        pki.ca.display()
    );
    let cfg = mini_scan::db::config(&url).expect("a valid TLS URL");
    wait_until(
        Duration::from_secs(30),
        "PostgreSQL to accept TLS",
        async || match mini_scan::db::connect(&cfg).await {
            Ok(_) => Ok(()),
            Err(e) => Err(mini_scan::error::Chain(&e).to_string()),
        },
    )
    .await;
}

/// The TCP port of `pg`.
pub fn port(pg: &DedicatedPostgres) -> u16 {
    let url = pg.admin_url();
    let after = url.rsplit_once(':').expect("a port in the admin URL").1;
    after
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric port")
}

/// Writes a file the server can read and nobody else: PostgreSQL refuses a key file that others
/// can read.
fn write_owned(path: &Path, text: &str, uid: u32, gid: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Err(e) = std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        // Only root may give files away; then we are the server's user already.
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied,
            "chown {}: {e}",
            path.display()
        );
    }
}
