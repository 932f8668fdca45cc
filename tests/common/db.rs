//! Reading a test database directly, to compare what the daemon stored.

use std::path::Path;

/// Every row of a query, as text, in the order the query gives.
pub fn table(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
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
