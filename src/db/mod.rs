//! PostgreSQL: the connection configuration (with TLS as libpq does it), the
//! one way to connect that `migrate`, `ingest` and `/readyz` share, the
//! connection pool, the migrations and the ingest role's grants.
//!
//! # Layout
//!
//! * this file: [`Config`] and [`config`], which parses `DATABASE_URL`.
//! * `connect`: [`connect`], [`pool`] and [`ConnectError`].
//! * [`url`]: takes libpq's TLS parameters out of `DATABASE_URL` (pure).
//! * [`tls`]: what they mean, the rustls connector, and why a TLS
//!   connection failed.
//! * [`migrate`]: migrations that run once (refinery, under an advisory lock).
//! * [`grants`]: `migrate --grant-ingest-to ROLE`.
//!
//! Nothing here prints the connection string or the password: errors name
//! parameters and files, never values from `DATABASE_URL`.

mod connect;
pub mod grants;
pub mod migrate;
pub mod tls;
pub mod url;

pub use connect::{ConnectError, connect, pool};
pub use grants::{GrantError, grant_ingest};
pub use migrate::{MIGRATIONS, MigrateError, Migration, migrate, migrate_with, migrations};
pub use url::SslMode;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long to wait for a TCP connection to PostgreSQL when the URL does not
/// say: long enough for a busy server, short enough that a dead one is
/// noticed and reported (`/readyz`) promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is and how to reach it: a tokio-postgres
/// configuration plus TLS. Derefs to the tokio-postgres configuration, so
/// settings such as `options` can still be changed after [`config`].
#[derive(Clone)]
pub struct Config {
    pg: tokio_postgres::Config,
    tls: Option<Tls>,
}

/// TLS for a connection: the mode and the connector built for it.
#[derive(Clone)]
struct Tls {
    plan: tls::Plan,
    connector: MakeRustlsConnect,
}

impl std::ops::Deref for Config {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &Self::Target {
        &self.pg
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pg
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Debug redacts the password.
        f.debug_struct("Config")
            .field("pg", &self.pg)
            .field("tls", &self.tls.as_ref().map(|t| &t.plan))
            .finish()
    }
}

impl Config {
    /// The effective `sslmode`.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.as_ref().map_or(SslMode::Disable, |t| t.plan.mode)
    }
}

/// A bad `DATABASE_URL` or TLS setting. The URL's value is never printed: it
/// may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    /// The TLS parameters.
    #[error("DATABASE_URL: {0}")]
    Params(#[from] url::UrlError),
    /// tokio-postgres cannot parse the rest. Its errors name parameters,
    /// not values.
    #[error("DATABASE_URL is not a valid PostgreSQL connection string")]
    Parse(#[source] tokio_postgres::Error),
    /// Settings that cannot connect anywhere.
    #[error("DATABASE_URL: {0}")]
    Invalid(&'static str),
    /// TLS cannot be set up (a file, or an impossible combination).
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
}

/// Parses `DATABASE_URL` (URL or `key=value` form, with libpq's TLS
/// parameters), fills in a connect timeout and application name, and builds
/// the TLS connector, reading certificate files now.
pub fn config(url: &str) -> Result<Config, BadUrl> {
    let (rest, ssl) = url::split(url)?;
    let mut pg = tokio_postgres::Config::from_str(&rest).map_err(BadUrl::Parse)?;
    check_hosts(&pg)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("mini-scan");
    }
    // libpq never uses TLS over Unix sockets.
    let unix_only =
        pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_))) && pg.get_hostaddrs().is_empty();
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let plan = tls::plan(&ssl, home.as_deref(), Path::exists)?;
    let tls = if plan.mode == SslMode::Disable || unix_only {
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        None
    } else {
        if pg.get_hosts().is_empty() {
            return Err(BadUrl::Invalid(
                "TLS needs `host` (the name the server's certificate is checked against), not only `hostaddr`; or set sslmode=disable",
            ));
        }
        pg.ssl_mode(if plan.mode == SslMode::Prefer {
            tokio_postgres::config::SslMode::Prefer
        } else {
            tokio_postgres::config::SslMode::Require
        });
        let connector = tls::connector(&plan)?;
        Some(Tls { plan, connector })
    };
    Ok(Config { pg, tls })
}

/// The checks tokio-postgres makes when connecting, made once here so that a
/// connection error is never a configuration error (see [`tls::classify`]).
fn check_hosts(pg: &tokio_postgres::Config) -> Result<(), BadUrl> {
    let (hosts, addrs, ports) = (
        pg.get_hosts().len(),
        pg.get_hostaddrs().len(),
        pg.get_ports().len(),
    );
    if hosts == 0 && addrs == 0 {
        return Err(BadUrl::Invalid("no host given"));
    }
    if hosts != 0 && addrs != 0 && hosts != addrs {
        return Err(BadUrl::Invalid(
            "the numbers of `host` and `hostaddr` values differ",
        ));
    }
    if ports > 1 && ports != hosts.max(addrs) {
        return Err(BadUrl::Invalid("the numbers of hosts and ports differ"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;
    use proptest::prelude::*;

    const PASSWORD: &str = "Zq7-SECRET-pw-4711";

    #[test]
    fn tls_parameters_reach_the_plan() {
        let cfg = config("postgres://u@h/d?sslmode=require&sslsni=0").unwrap();
        assert_eq!(cfg.ssl_mode(), SslMode::Require);
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let cfg = config("host=h user=u sslmode=disable").unwrap();
        assert_eq!(cfg.ssl_mode(), SslMode::Disable);
        // libpq's default.
        assert_eq!(config("host=h").unwrap().ssl_mode(), SslMode::Prefer);
        // Never TLS over a Unix socket.
        let cfg = config("host=/run/postgresql sslmode=require").unwrap();
        assert_eq!(cfg.ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn connection_errors_are_never_configuration_errors() {
        for (url, want) in [
            ("user=u", "no host given"),
            (
                "host=a,b hostaddr=127.0.0.1",
                "numbers of `host` and `hostaddr`",
            ),
            ("host=a,b,c port=1,2", "numbers of hosts and ports"),
            ("hostaddr=127.0.0.1 sslmode=require", "TLS needs `host`"),
        ] {
            let err = config(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    /// Whether the error for `url`, if any, shows the password.
    fn leaks(url: &str) -> bool {
        config(url).is_err_and(|e| {
            Chain(&e).to_string().contains(PASSWORD) || format!("{e:?}").contains(PASSWORD)
        })
    }

    #[test]
    fn the_debug_form_redacts_the_password() {
        for url in [
            format!("postgres://u:{PASSWORD}@h/d?sslmode=require"),
            format!("host=h password={PASSWORD}"),
        ] {
            let cfg = config(&url).unwrap();
            assert!(!format!("{cfg:?}").contains(PASSWORD));
        }
    }

    #[test]
    fn malformed_urls_do_not_print_the_password() {
        for url in [
            format!("postgres://u:{PASSWORD}@h:notaport/d"),
            format!("postgres://u:{PASSWORD}@h/d?sslmode=bogus"),
            format!("postgres://u:{PASSWORD}@h/d?nosuchoption=1"),
            format!(
                "postgres://u:{PASSWORD}@h/d?sslrootcert=/nonexistent/ca.pem&sslmode=verify-full"
            ),
            format!("postgres://u:{PASSWORD}@[::1/d"),
            format!("host=h password={PASSWORD} port=x"),
            format!("host=h password='{PASSWORD}"),
            format!("host=h password={PASSWORD} sslmode=verify-ca"),
            format!("host=h password = {PASSWORD} bogus"),
        ] {
            assert!(!leaks(&url), "{url}");
        }
    }

    proptest! {
        /// Whatever surrounds it, a password in the password's place is not
        /// printed. (Text that moves it elsewhere, an `@` before it in a URL
        /// or an open quote in key=value form, makes it some other field.)
        #[test]
        fn no_connection_string_prints_its_password(
            before in "[ -?A-~]{0,20}", after in "[ -~]{0,20}", url_form in any::<bool>()
        ) {
            let url = if url_form {
                format!("postgres://{before}:{PASSWORD}@{after}")
            } else {
                let before = before.replace(['\'', '\\'], "");
                format!("{before} password={PASSWORD} {after}")
            };
            prop_assert!(!leaks(&url), "{}", url);
        }
    }
}
