//! What the fuzz targets share: a store on a temporary SQLite file, opened through the same
//! configuration loader as the daemon, and a runtime to drive it.

use rebilly_webhookd::config::Settings;
use rebilly_webhookd::storage::Store;
use std::path::Path;

/// A single-threaded runtime: each target drives the library from one thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A temporary folder, in memory when the system has one (`/dev/shm`), since the targets
/// open a fresh database for every input and need no durability.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temporary folder")
}

/// Opens a store on `dir/fuzz.db`, with the built-in defaults but without syncing every commit.
pub fn open_store(dir: &Path) -> Store {
    let settings = load_settings(&format!(
        "[storage]\npath = \"{}\"\nsynchronous = \"normal\"\n",
        dir.join("fuzz.db").display()
    ));
    Store::open(&settings.storage).expect("open the store")
}

/// Loads settings from `toml` as the daemon would read its configuration file.
pub fn load_settings(toml: &str) -> Settings {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, toml).expect("write the configuration");
    Settings::load(Some(&config)).expect("a valid configuration")
}
