//! Migrations: the files of `sql/migrations/`, embedded in the binary and applied in name order,
//! each recorded with its SHA-256 in `schema_migrations`.

use rust_embed::Embed;
use sha2::{Digest, Sha256};

use super::{DbError, PgConn};
use crate::model::hex;

#[derive(Embed)]
#[folder = "sql/migrations/"]
#[include = "*.sql"]
struct Migrations;

/// Any fixed number, shared by every replica: whoever holds it migrates, the others wait.
const MIGRATION_LOCK: i64 = 0x706f_7274_666f_6c69; // "portfoli"

/// Applies every embedded migration not yet recorded in `schema_migrations`, in file-name order,
/// in one transaction under an advisory lock. Returns the names applied.
pub fn migrate(c: &mut PgConn) -> Result<Vec<String>, DbError> {
    let mut tx = c.transaction()?;
    // Transaction-scoped: released on commit or rollback, never left held by a pooled connection.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // "relation already exists, skipping" NOTICEs are expected here, on every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             name TEXT PRIMARY KEY,
             sha256 TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let mut applied = Vec::new();
    for name in Migrations::iter() {
        let file = Migrations::get(&name).expect("listed by iter");
        let sql = std::str::from_utf8(&file.data).map_err(|e| DbError::Migration {
            name: name.to_string(),
            problem: format!("not UTF-8: {e}"),
        })?;
        let digest = hex(&Sha256::digest(sql.as_bytes()));
        let recorded = tx.query_opt(
            "SELECT sha256 FROM schema_migrations WHERE name = $1",
            &[&name.as_ref()],
        )?;
        match recorded {
            Some(row) => {
                let was: String = row.get(0);
                if was != digest {
                    return Err(DbError::Migration {
                        name: name.to_string(),
                        problem: "was edited after it was applied; add a new migration instead"
                            .into(),
                    });
                }
            }
            None => {
                tx.batch_execute(sql).map_err(|e| DbError::Migration {
                    name: name.to_string(),
                    problem: e
                        .as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_string()),
                })?;
                tx.execute(
                    "INSERT INTO schema_migrations (name, sha256) VALUES ($1, $2)",
                    &[&name.as_ref(), &digest],
                )?;
                applied.push(name.to_string());
            }
        }
    }
    tx.commit()?;
    Ok(applied)
}
