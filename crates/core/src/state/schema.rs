//! The database's identity and schema: the Go service's version 1, and the forward-only
//! migrations from there to [`VERSION`].

use std::path::Path;

use anyhow::bail;
use rusqlite::{Connection, TransactionBehavior};

use super::sql_error;

/// `PRAGMA application_id` of a managed-tokens database; the Go service used the same
/// value, which is what lets an operator keep their `dbLocation`.
pub(super) const APPLICATION_ID: i32 = 0x5da8_2553;

/// The newest `PRAGMA user_version` this code knows.
pub(super) const VERSION: i32 = 3;

/// Version 1 is the Go service's schema. A new database is created at version 1 and then
/// migrated like an operator's, so the one migration path is the one that is tested.
///
/// The Go tables (`services`, `nodes`, `setup_errors`, `push_errors`) are left in place
/// after the migration: unused by us, but a rollback to the Go service still finds them.
pub(super) const GO_SCHEMA: &str = "
CREATE TABLE uids (
    username STRING UNIQUE NOT NULL PRIMARY KEY,
    uid INTEGER UNIQUE NOT NULL
);
CREATE TABLE services (
    id INTEGER NOT NULL PRIMARY KEY,
    name STRING UNIQUE NOT NULL
);
CREATE TABLE nodes (
    id INTEGER NOT NULL PRIMARY KEY,
    name STRING UNIQUE NOT NULL
);
CREATE TABLE setup_errors (
    service_id INTEGER UNIQUE,
    count INTEGER,
    FOREIGN KEY (service_id) REFERENCES services(id) ON DELETE CASCADE
);
CREATE TABLE push_errors (
    service_id INTEGER,
    node_id INTEGER,
    count INTEGER,
    UNIQUE (service_id, node_id),
    FOREIGN KEY (service_id) REFERENCES services(id) ON DELETE CASCADE,
    FOREIGN KEY (node_id) REFERENCES nodes(id) ON DELETE CASCADE
);
";

/// Version 2: our own tables. Times are UNIX seconds.
///
/// The Go service's push error counts are carried over as streaks of unknown start: they
/// count failures since its last message rather than since the last success, which is
/// close enough to keep the stakeholder threshold going. Its setup counts are not: they
/// mixed every stage of one binary, and admins hear of every failing run anyway.
const V2: &str = "
CREATE TABLE streaks (
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 0),
    since INTEGER,
    notified INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL,
    PRIMARY KEY (service, kind, name)
) WITHOUT ROWID;
CREATE TABLE outcomes (
    service TEXT NOT NULL,
    stage TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_name TEXT NOT NULL,
    binary TEXT NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    class TEXT,
    message TEXT,
    last_success INTEGER,
    PRIMARY KEY (service, stage, target_kind, target_name)
) WITHOUT ROWID;
CREATE TABLE service_runs (
    service TEXT NOT NULL,
    binary TEXT NOT NULL,
    last_run INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    last_success INTEGER,
    PRIMARY KEY (service, binary)
) WITHOUT ROWID;
CREATE TABLE pending (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    claimed_at INTEGER
);
INSERT INTO streaks (service, kind, name, count, since, notified, updated)
    SELECT s.name, 'push', n.name, p.count, NULL, 0, CAST(strftime('%s', 'now') AS INTEGER)
    FROM push_errors p JOIN services s ON s.id = p.service_id JOIN nodes n ON n.id = p.node_id
    WHERE p.count > 0;
";

/// Version 3: when each cached UID was last confirmed, so that UIDs from FERRY are asked
/// again once a day (the Go service refreshed them daily). Kept beside the Go service's
/// `uids` table, which stays as it was.
const V3: &str = "
CREATE TABLE uid_refreshed (
    username TEXT NOT NULL PRIMARY KEY,
    refreshed INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Every migration: the version it produces and its SQL.
const MIGRATIONS: [(i32, &str); 3] = [(1, GO_SCHEMA), (2, V2), (3, V3)];

/// Checks that `conn` is a managed-tokens database (or an empty file), and a version we
/// can read.
pub(super) fn check_identity(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let read = |pragma: &str| -> anyhow::Result<i32> {
        conn.pragma_query_value(None, pragma, |row| row.get(0))
            .map_err(|e| sql_error(e, path, &format!("read `{pragma}`")))
    };
    let application_id = read("application_id")?;
    let version = read("user_version")?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|e| sql_error(e, path, "list the tables"))?;

    if application_id == 0 && version == 0 && objects == 0 {
        return Ok(());
    }
    if application_id != APPLICATION_ID {
        bail!(
            "`{}` is a SQLite database of another application (application_id {application_id:#x}, \
             expected {APPLICATION_ID:#x}); point `dbLocation` at another file, or move this \
             one aside if it is not needed",
            path.display()
        );
    }
    if version > VERSION {
        bail!(
            "the state database `{}` has schema version {version}, newer than this program \
             knows ({VERSION}); it was written by a newer managed-tokens: upgrade this one, or \
             point `dbLocation` at another file",
            path.display()
        );
    }
    Ok(())
}

/// Brings the schema to [`VERSION`], one transaction per migration. The version is read
/// again inside each transaction, so two processes opening a new database at once do not
/// both apply a migration.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> anyhow::Result<()> {
    let current: i32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| sql_error(e, path, "read `user_version`"))?;
    if current == VERSION {
        return Ok(());
    }
    for (version, sql) in MIGRATIONS {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, path, "start a schema migration"))?;
        let current: i32 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| sql_error(e, path, "read `user_version`"))?;
        if current >= version {
            continue;
        }
        if current != version - 1 {
            bail!(
                "the state database `{}` is at schema version {current}, which no migration \
                 starts from",
                path.display()
            );
        }
        if version == 1 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| sql_error(e, path, "set `application_id`"))?;
        }
        tx.execute_batch(sql)
            .map_err(|e| sql_error(e, path, &format!("migrate to schema version {version}")))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(|e| sql_error(e, path, "set `user_version`"))?;
        tx.commit()
            .map_err(|e| sql_error(e, path, &format!("commit schema version {version}")))?;
        log::info!(
            "migrated the state database `{}` to schema version {version}",
            path.display()
        );
    }
    Ok(())
}
