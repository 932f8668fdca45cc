//! The backend matrix: one test body, run once per storage backend.
//!
//! [`backends!`] wraps test functions so that each `name` becomes `name::sqlite` and
//! `name::postgres`. The backend rides along as a task-local, so the configuration builders of
//! this harness ([`storage_lines`], and through it `config_text`, `base_config`, `spawn_app`)
//! give every daemon the test starts the right `[storage]` keys: SQLite's file, or a fresh
//! PostgreSQL database. Tests about SQLite itself (its file, its locks, its upgrades) are not
//! wrapped and run on SQLite alone.

use super::postgres;
use std::future::Future;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

thread_local! {
    /// The backend of a synchronous test, which runs on a thread of its own.
    static THREAD_BACKEND: std::cell::Cell<Option<Backend>> = const { std::cell::Cell::new(None) };
}

/// The backend of the running test; SQLite outside the matrix.
pub fn current() -> Backend {
    BACKEND
        .try_with(|backend| *backend)
        .ok()
        .or_else(|| THREAD_BACKEND.with(std::cell::Cell::get))
        .unwrap_or(Backend::Sqlite)
}

/// Runs a test body with `backend` as the current backend. On PostgreSQL without a server the
/// body does not run: [`postgres::no_postgres`] says so loudly, or fails under `CI=true`.
pub async fn on(backend: Backend, test: impl Future<Output = ()>) {
    if backend == Backend::Postgres && !postgres::available().await {
        return;
    }
    BACKEND.scope(backend, test).await
}

/// [`on`] for a synchronous test body.
pub fn on_sync(backend: Backend, test: impl FnOnce()) {
    if backend == Backend::Postgres && !postgres::available_now() {
        return;
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            THREAD_BACKEND.with(|cell| cell.set(None));
        }
    }
    THREAD_BACKEND.with(|cell| cell.set(Some(backend)));
    let _reset = Reset;
    test()
}

/// The lines of the `[storage]` table besides `path` for the current backend: nothing for
/// SQLite, `backend` and the `url` of a new empty database for PostgreSQL.
pub fn storage_lines() -> String {
    storage_lines_for(current())
}

/// [`storage_lines`] for a given backend.
pub fn storage_lines_for(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => String::new(),
        Backend::Postgres => {
            let url = postgres::fresh_database_url()
                .expect("the matrix only runs PostgreSQL bodies when a server is there");
            format!("backend = \"postgres\"\nurl = \"{url}\"\n")
        }
    }
}

/// A whole `[storage]` table for the current backend, keeping SQLite's file at `path`.
pub fn storage_table(path: &Path) -> String {
    storage_table_for(current(), path)
}

/// [`storage_table`] for a given backend.
pub fn storage_table_for(backend: Backend, path: &Path) -> String {
    format!(
        "[storage]\npath = \"{}\"\nsynchronous = \"normal\"\n{}",
        path.display(),
        storage_lines_for(backend)
    )
}

/// Wraps `#[tokio::test] async fn name() { ... }` (or `#[test] fn name() { ... }`) items so
/// that each runs once per backend, as `name::sqlite` and `name::postgres`.
#[allow(unused_macros)]
macro_rules! backends {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$meta])*
                fn sqlite() {
                    $crate::common::matrix::on_sync($crate::common::matrix::Backend::Sqlite, || $body)
                }

                $(#[$meta])*
                fn postgres() {
                    $crate::common::matrix::on_sync($crate::common::matrix::Backend::Postgres, || $body)
                }
            }
        )*
    };
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$meta])*
                async fn sqlite() {
                    $crate::common::matrix::on(
                        $crate::common::matrix::Backend::Sqlite,
                        async move $body,
                    )
                    .await
                }

                $(#[$meta])*
                async fn postgres() {
                    $crate::common::matrix::on(
                        $crate::common::matrix::Backend::Postgres,
                        async move $body,
                    )
                    .await
                }
            }
        )*
    };
}
pub(crate) use backends;
