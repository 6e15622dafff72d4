//! Databases on any PostgreSQL server: one of ours ([`super::Cluster`]) or the one `DATABASE_URL`
//! names.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Mutex;

use tokio_postgres::{Client, NoTls};

use super::postgres::how_to_get_postgres;
use super::{Error, Purpose, random_name};

/// Connects to `url` without TLS, driving the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database [`create_database`] made.
#[derive(Clone, Debug)]
pub struct Database {
    /// Its random name.
    pub name: String,
    /// Its connection URL: the admin URL with the database name replaced.
    pub url: String,
}

/// Creates a database with a random name on the server whose maintenance database is at
/// `admin_url`. The first time it sees a server it prints the server's version to stderr, so that
/// a run names the PostgreSQL it used.
pub async fn create_database(admin_url: &str, purpose: Purpose) -> Result<Database, Error> {
    let admin = connect(admin_url).await.map_err(|e| {
        Error::with_fix(
            format!("cannot connect to PostgreSQL at {admin_url}: {e}"),
            how_to_get_postgres(purpose),
        )
    })?;
    announce_version(&admin, admin_url, purpose).await?;
    let name = random_name(&purpose.prefix().replace('-', "_"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| Error::new(format!("CREATE DATABASE {name} on {admin_url} failed: {e}")))?;
    Ok(Database {
        url: with_dbname(admin_url, &name),
        name,
    })
}

/// Prints `SELECT version()` once per server: straight to stderr, which the test harness does not
/// capture, so a passing run shows it too.
async fn announce_version(admin: &Client, admin_url: &str, purpose: Purpose) -> Result<(), Error> {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let first = SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(admin_url.to_owned());
    if !first {
        return Ok(());
    }
    let row = admin
        .query_one("SELECT version(), current_setting('port')", &[])
        .await
        .map_err(|e| Error::new(format!("SELECT version() on {admin_url} failed: {e}")))?;
    let (version, port): (String, String) = (row.get(0), row.get(1));
    let _ = writeln!(
        std::io::stderr(),
        "[{}] PostgreSQL on port {port}: {version}",
        purpose.noun()
    );
    Ok(())
}

/// `url` with its database name replaced by `dbname`; handles both the URL and the
/// `key=value` forms of connection strings.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .map(|rest| url.len() - rest.len())
    else {
        // key=value: a later key overrides an earlier one.
        return format!("{url} dbname={dbname}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{dbname}{query}", &base[..authority_end])
}

// Paths, not imports: bench binaries compile this module with `cfg(test)` but no test harness.
#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_in_every_form() {
        assert_eq!(
            super::with_dbname("postgres://u@h:5/old", "new"),
            "postgres://u@h:5/new"
        );
        assert_eq!(
            super::with_dbname("postgresql://u@h", "new"),
            "postgresql://u@h/new"
        );
        assert_eq!(
            super::with_dbname("postgres://u:p@h:5/old?sslmode=disable", "new"),
            "postgres://u:p@h:5/new?sslmode=disable"
        );
        assert_eq!(
            super::with_dbname("host=h user=u", "new"),
            "host=h user=u dbname=new"
        );
    }
}
