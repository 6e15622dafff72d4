//! `mini-scan migrate --grant-ingest-to ROLE`: the least the ingester needs.
//!
//! The write stage (through src/store/sql.rs) creates a temporary staging
//! table, COPYs into it, upserts into `scan_results` with `ON CONFLICT DO
//! UPDATE ... WHERE` (which reads the existing row: SELECT, INSERT, UPDATE),
//! and inserts into `dead_letters` with `ON CONFLICT (message_id) DO
//! NOTHING`, which needs INSERT and, for the conflict target, SELECT on
//! `message_id` (PostgreSQL checks it: without it the insert is refused),
//! but not on the payloads. So the role gets exactly:
//!
//! ```sql
//! GRANT CONNECT, TEMPORARY ON DATABASE "<database>" TO "<role>";
//! GRANT USAGE ON SCHEMA "<schema>" TO "<role>";
//! GRANT SELECT, INSERT, UPDATE ON TABLE "<schema>"."scan_results" TO "<role>";
//! GRANT INSERT, SELECT (message_id) ON TABLE "<schema>"."dead_letters" TO "<role>";
//! ```
//!
//! and nothing else: no DELETE, TRUNCATE, DDL, or other tables. GRANT is
//! idempotent, so running it on every `migrate` is safe. The role must
//! already exist (creating it, and its password, is the operator's).

use tokio_postgres::Client;

/// Why the grants failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The role does not exist.
    #[error(
        "--grant-ingest-to (env MINISCAN_GRANT_INGEST_TO): role \"{0}\" does not exist; create it first, e.g. CREATE ROLE {q} LOGIN PASSWORD '...'",
        q = quote_ident(.0)
    )]
    NoRole(String),
    /// The database refused (e.g. the migrating role does not own the
    /// database, so it cannot grant CONNECT on it).
    #[error("cannot grant the ingest role \"{0}\" its privileges")]
    Database(String, #[source] tokio_postgres::Error),
}

/// `s` as a PostgreSQL identifier: double-quoted, inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The statements that grant `role` what ingesting needs, on `database`
/// and the tables in `schema`.
pub fn statements(database: &str, schema: &str, role: &str) -> Vec<String> {
    let (db, sch, role) = (
        quote_ident(database),
        quote_ident(schema),
        quote_ident(role),
    );
    vec![
        format!("GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}"),
        format!("GRANT USAGE ON SCHEMA {sch} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON TABLE {sch}.\"scan_results\" TO {role}"),
        format!("GRANT INSERT, SELECT (message_id) ON TABLE {sch}.\"dead_letters\" TO {role}"),
    ]
}

/// Grants `role` what ingesting needs, in one transaction. Warns when the
/// grants cannot restrict the role (a superuser, or the tables' owner).
pub async fn grant_ingest(client: &mut Client, role: &str) -> Result<(), GrantError> {
    let db_err = |e| GrantError::Database(role.to_owned(), e);
    let tx = client.transaction().await.map_err(db_err)?;
    let row = tx
        .query_opt(
            "SELECT r.rolsuper, r.rolname = pg_get_userbyid(c.relowner), current_database(), n.nspname
             FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE r.rolname = $1 AND c.oid = 'scan_results'::regclass",
            &[&role],
        )
        .await
        .map_err(db_err)?
        .ok_or_else(|| GrantError::NoRole(role.to_owned()))?;
    let (superuser, owner, database, schema): (bool, bool, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if superuser || owner {
        tracing::warn!(
            role,
            superuser,
            owner,
            "the ingest role is a superuser or owns the tables: grants cannot restrict it"
        );
    }
    for sql in statements(&database, &schema, role) {
        tx.batch_execute(&sql).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    tracing::info!(
        role,
        database,
        schema,
        "granted the ingest role its privileges"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads one quoted identifier back, as PostgreSQL's scanner does.
    fn unquote(q: &str) -> Option<String> {
        let inner = q.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                // Inside, a quote only ever comes doubled.
                (chars.next()? == '"').then_some(())?;
            }
            out.push(c);
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn quoting_reads_back_as_the_same_name(name in "[ -~é\"]{0,20}") {
            prop_assert_eq!(unquote(&quote_ident(&name)), Some(name));
        }
    }

    #[test]
    fn grants_are_exactly_what_ingest_needs() {
        assert_eq!(
            statements("scans", "public", "in\"gest"),
            [
                "GRANT CONNECT, TEMPORARY ON DATABASE \"scans\" TO \"in\"\"gest\"",
                "GRANT USAGE ON SCHEMA \"public\" TO \"in\"\"gest\"",
                "GRANT SELECT, INSERT, UPDATE ON TABLE \"public\".\"scan_results\" TO \"in\"\"gest\"",
                "GRANT INSERT, SELECT (message_id) ON TABLE \"public\".\"dead_letters\" TO \"in\"\"gest\"",
            ]
        );
    }
}
