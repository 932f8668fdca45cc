//! Reading a test database directly, to compare what the daemon stored.

use std::path::Path;

/// A connection to the event log at `db` with its projection file attached, as the daemon
/// opens them, so that `customers` names the projection's table.
pub fn sqlite_connection(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    let projection = rebilly_webhookd::storage::sqlite::projection_path(db);
    conn.execute(
        "ATTACH DATABASE ?1 AS projection",
        [projection.to_str().unwrap()],
    )
    .unwrap();
    conn
}

/// `path` with `suffix` appended to its file name, as SQLite names its `-wal` and `-shm`.
pub fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

/// Deletes a database file and whichever of its journals exist.
pub fn remove_with_journals(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let path = beside(file, suffix);
        if path.exists() {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// Replaces `to` (and its journals) by a copy of the database file `file` and whichever of its
/// journals exist, as they are.
pub fn copy_with_journals(file: &Path, to: &Path) {
    remove_with_journals(to);
    for suffix in ["", "-wal", "-shm"] {
        let source = beside(file, suffix);
        if source.exists() {
            std::fs::copy(&source, beside(to, suffix))
                .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        }
    }
}

/// Every row of a query, as text, in the order the query gives.
pub fn table(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = sqlite_connection(db);
    let mut statement = conn.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Every row of the `customers` table, as text, ordered by id.
pub fn customers_table(db: &Path) -> Vec<Vec<String>> {
    table(db, "SELECT * FROM customers ORDER BY id")
}

/// The database a test daemon's configuration names, on either backend, for tests that damage
/// or inspect what the daemon stored beneath its API (rebuild, pruning).
pub enum Database {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Database {
    /// The database of the configuration file at `config`.
    pub fn of_config(config: &Path) -> Database {
        use rebilly_webhookd::config::{Settings, StorageBackend};
        let settings = Settings::load(Some(config)).expect("the test configuration loads");
        match settings.storage.backend {
            StorageBackend::Sqlite => Database::Sqlite(settings.storage.path.clone()),
            StorageBackend::Postgres => Database::Postgres(
                settings
                    .storage
                    .url
                    .as_ref()
                    .expect("storage.url")
                    .expose()
                    .to_owned(),
            ),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// Every row of a query, each value as text, in the order the query gives. Values print
    /// differently on each backend; compare results of one backend with each other only.
    pub fn table(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            Database::Sqlite(path) => table(path, sql),
            Database::Postgres(url) => postgres_rows(url, sql),
        }
    }

    /// Runs statements (separated by `;`) outside the daemon.
    pub fn execute(&self, sql: &str) {
        match self {
            Database::Sqlite(path) => sqlite_connection(path).execute_batch(sql).unwrap(),
            Database::Postgres(url) => {
                postgres_rows(url, sql);
            }
        }
    }

    /// Every row of the `customers` table, ordered by id.
    pub fn customers(&self) -> Vec<Vec<String>> {
        self.table("SELECT * FROM customers ORDER BY id")
    }
}

/// Runs `sql` with PostgreSQL's simple protocol, which answers every value as text, from a
/// thread of its own so that async tests may call it too.
fn postgres_rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
            let driver = tokio::spawn(connection);
            let messages = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            drop(client);
            let _ = driver.await;
            messages
                .into_iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| format!("{:?}", row.get(i)))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    })
    .join()
    .expect("the query thread")
}
