//! A throwaway PostgreSQL for the test process.
//!
//! `REBILLY_WEBHOOKD_TEST_POSTGRES_URL` names a server to use when set. Otherwise the harness
//! looks for `initdb` and `pg_ctl` under `/usr/lib/postgresql/*/bin` (or in `PATH`), creates a cluster in a
//! folder under the temporary directory on a free port (as user `postgres` when the tests run
//! as root, since PostgreSQL refuses to run as root), and starts it once per test process. A
//! small watchdog shell stops it and removes the folder once the test process is gone, however
//! it ends.
//!
//! Each test asks for its own empty database with [`fresh_database_url`]. Without any
//! PostgreSQL, a test that needs one prints `SKIPPED (no PostgreSQL)` and returns, except under
//! `CI=true`, where it fails: a check that needs PostgreSQL never passes silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The environment variable naming an existing server the tests may create databases on.
pub const URL_VARIABLE: &str = "REBILLY_WEBHOOKD_TEST_POSTGRES_URL";

/// The account PostgreSQL runs under when the tests run as root.
const SERVICE_USER: &str = "postgres";

/// Where the shared server is, decided once per test process.
enum Shared {
    /// A server given by the environment: its URL, pointing at a database we may connect to.
    External(String),
    /// The cluster this process started.
    Local(LocalServer),
    /// No PostgreSQL could be found or started; the reason says why.
    Missing(String),
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A new, empty database on the test PostgreSQL, as a URL for `[storage] url`; `None` (after a
/// loud line on stderr) when there is no PostgreSQL and the run is not CI.
///
/// This blocks while the server starts and the database is created; from async code prefer
/// [`fresh_database`].
pub fn fresh_database_url() -> Option<String> {
    let admin_url = match shared() {
        Shared::External(url) => url.clone(),
        Shared::Local(server) => server.admin_url(),
        Shared::Missing(reason) => return no_postgres(reason),
    };
    let name = next_database_name();
    create_database(&admin_url, &name)
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    Some(with_database(&admin_url, &name))
}

/// [`fresh_database_url`] off the async runtime's threads.
pub async fn fresh_database() -> Option<String> {
    tokio::task::spawn_blocking(fresh_database_url)
        .await
        .expect("creating a test database")
}

/// Whether a PostgreSQL server is there for the tests (starting the shared one if need be);
/// when not, [`no_postgres`] has said so, or failed the test under `CI=true`. Blocks.
pub fn available_now() -> bool {
    match shared() {
        Shared::Missing(reason) => no_postgres::<()>(reason).is_some(),
        _ => true,
    }
}

/// [`available_now`] off the async runtime's threads.
pub async fn available() -> bool {
    tokio::task::spawn_blocking(available_now)
        .await
        .expect("looking for PostgreSQL")
}

/// Handles the absence of PostgreSQL: fails under CI, otherwise says so loudly.
pub fn no_postgres<T>(reason: &str) -> Option<T> {
    absent(reason, std::env::var("CI").is_ok_and(|v| v == "true"))
}

/// [`no_postgres`] with the CI flag given.
pub fn absent<T>(reason: &str, ci: bool) -> Option<T> {
    if ci {
        panic!(
            "this test needs PostgreSQL and CI=true: {reason}. Install PostgreSQL's server \
             (apt-get install postgresql) or set {URL_VARIABLE}"
        );
    }
    eprintln!(
        "\n==== SKIPPED (no PostgreSQL): {reason}. Install PostgreSQL's server or set \
         {URL_VARIABLE} to run this test. ====\n"
    );
    None
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_VARIABLE)
            && !url.trim().is_empty()
        {
            let url = url.trim().to_owned();
            drop_stale_databases(&url);
            return Shared::External(url);
        }
        match LocalServer::start() {
            Ok(server) => Shared::Local(server),
            Err(reason) => Shared::Missing(reason),
        }
    })
}

fn next_database_name() -> String {
    let n = DATABASES.fetch_add(1, Ordering::Relaxed);
    format!("webhookd_test_{}_{n}", std::process::id())
}

/// A PostgreSQL cluster in its own folder, owned by this test process.
pub struct LocalServer {
    bin: PathBuf,
    folder: PathBuf,
    port: u16,
    /// The superuser's password when connections over TCP must give one.
    password: Option<String>,
}

impl LocalServer {
    /// A new cluster on a free port, started, with a watchdog that removes it when the test
    /// process exits. Used directly by tests that stop and restart their server; everything
    /// else shares one through [`fresh_database_url`].
    pub fn start() -> Result<LocalServer, String> {
        LocalServer::start_with(None)
    }

    /// [`LocalServer::start`], where connections over TCP must give a password
    /// (`scram-sha-256`), the superuser's being `password`.
    pub fn start_with(password: Option<&str>) -> Result<LocalServer, String> {
        let bin = server_binaries()?;
        let folder = new_folder()?;
        let server = LocalServer {
            bin,
            folder,
            port: 0,
            password: password.map(str::to_owned),
        };
        server.watch_over_test_process()?;
        server.init()?;
        server.start_on_free_port()
    }

    /// A private cluster for a test that stops and restarts it, or `None` (through
    /// [`no_postgres`]) when the machine has no PostgreSQL binaries.
    pub fn private() -> Option<LocalServer> {
        match LocalServer::start() {
            Ok(server) => Some(server),
            Err(reason) => no_postgres(&reason),
        }
    }

    /// A private cluster that asks for passwords, or `None` as [`LocalServer::private`].
    pub fn private_with_password(password: &str) -> Option<LocalServer> {
        match LocalServer::start_with(Some(password)) {
            Ok(server) => Some(server),
            Err(reason) => no_postgres(&reason),
        }
    }

    /// The URL of the `postgres` maintenance database, as the superuser.
    pub fn admin_url(&self) -> String {
        let credentials = match &self.password {
            Some(password) => format!("{SERVICE_USER}:{password}"),
            None => SERVICE_USER.to_owned(),
        };
        format!("postgres://{credentials}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new empty database on this cluster, as a URL.
    pub fn fresh_database_url(&self) -> String {
        let name = next_database_name();
        create_database(&self.admin_url(), &name)
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        with_database(&self.admin_url(), &name)
    }

    /// Turns TLS on with a self-signed certificate for `localhost` (which no client trusts
    /// unless told to) and restarts the server.
    pub fn enable_tls(&self) -> Result<(), String> {
        let data = self.data();
        let (key, certificate) = (data.join("server.key"), data.join("server.crt"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&certificate)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "openssl: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        for file in [&key, &certificate] {
            give_to_service_user(file)?;
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("chmod the key: {e}"))?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        self.pg_ctl(&["stop", "-m", "fast", "-w"])?;
        self.pg_ctl_start()
    }

    /// Stops the server at once, as a crash or a lost network would look to its clients.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
            .unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
    }

    /// Starts the server again on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start()
            .unwrap_or_else(|e| panic!("starting PostgreSQL again: {e}"));
    }

    fn data(&self) -> PathBuf {
        self.folder.join("data")
    }

    fn init(&self) -> Result<(), String> {
        let initdb = self.bin.join("initdb");
        let data = self.data();
        let password_file = self.folder.join("superuser-password");
        let mut args = vec![
            "-D",
            path_str(&data),
            "-U",
            SERVICE_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ];
        let pwfile_argument;
        match &self.password {
            None => args.extend(["-A", "trust"]),
            Some(password) => {
                std::fs::write(&password_file, password)
                    .map_err(|e| format!("writing the password file: {e}"))?;
                give_to_service_user(&password_file)?;
                pwfile_argument = format!("--pwfile={}", path_str(&password_file));
                args.extend([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    &pwfile_argument,
                ]);
            }
        }
        run_as_service(&initdb, &args).map_err(|e| format!("initdb failed: {e}"))
    }

    fn start_on_free_port(mut self) -> Result<LocalServer, String> {
        let mut last_error = String::new();
        // Another process may take the port between our probe and the server's bind: retry.
        for _ in 0..5 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(self),
                Err(e) => last_error = e,
            }
        }
        Err(format!("PostgreSQL did not start: {last_error}"))
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // The machine does not crash under the tests, so the cluster skips fsync; but every
        // commit still reaches the kernel before it returns, so a server stopped with
        // `-m immediate` keeps whatever it acknowledged, as a real one would. The socket lives
        // in the cluster's own folder so parallel clusters never collide.
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} \
             -c max_connections=400 -c shared_buffers=32MB -c fsync=off \
             -c full_page_writes=off",
            port = self.port,
            folder = path_str(&self.folder),
        );
        let log = self.folder.join("server.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "-l",
            path_str(&log),
        ])
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}; server log:\n{tail}")
        })
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut all = vec!["-D", path_str(&data)];
        all.extend_from_slice(args);
        run_as_service(&pg_ctl, &all)
    }

    /// A detached shell that waits for this test process to end, then stops the server and
    /// removes its folder: a test binary that panics or is killed leaves nothing behind.
    fn watch_over_test_process(&self) -> Result<(), String> {
        let stop = service_command_line(&self.bin.join("pg_ctl"), &self.data());
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{folder}'",
            pid = std::process::id(),
            folder = path_str(&self.folder),
        );
        let mut command = if Path::new("/usr/bin/setsid").exists() {
            let mut c = Command::new("setsid");
            c.arg("sh");
            c
        } else {
            Command::new("sh")
        };
        command
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("starting the watchdog: {e}"))
    }
}

/// `pg_ctl stop -m immediate` as a shell command line, run as the service user when needed.
fn service_command_line(pg_ctl: &Path, data: &Path) -> String {
    let stop = format!(
        "'{}' -D '{}' stop -m immediate",
        path_str(pg_ctl),
        path_str(data)
    );
    if running_as_root() {
        format!("su {SERVICE_USER} -s /bin/sh -c \"{stop}\"")
    } else {
        stop
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding both `initdb` and `pg_ctl` (Debian's
/// layout), else the first folder of `PATH` that holds both.
fn server_binaries() -> Result<PathBuf, String> {
    debian_server_binaries()
        .or_else(path_server_binaries)
        .ok_or_else(|| "no initdb/pg_ctl under /usr/lib/postgresql/*/bin nor in PATH".to_owned())
}

fn holds_server_binaries(bin: &Path) -> bool {
    bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()
}

fn debian_server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            holds_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn path_server_binaries() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|bin| holds_server_binaries(bin))
}

/// An empty folder under the temporary directory that the service user owns.
fn new_folder() -> Result<PathBuf, String> {
    static FOLDERS: AtomicUsize = AtomicUsize::new(0);
    let n = FOLDERS.fetch_add(1, Ordering::Relaxed);
    let folder = std::env::temp_dir().join(format!("pgtests-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).map_err(|e| format!("creating {}: {e}", folder.display()))?;
    give_to_service_user(&folder)?;
    Ok(folder)
}

/// Hands `path` to the service user when the tests run as root.
fn give_to_service_user(path: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg(format!("{SERVICE_USER}:"))
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "could not give {} to user {SERVICE_USER}",
            path.display()
        ))
    }
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

/// Runs a server program, as the service user when we are root, and reports its output on
/// failure.
fn run_as_service(program: &Path, args: &[&str]) -> Result<(), String> {
    let mut command = if running_as_root() {
        let mut c =
            if Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists() {
                let mut c = Command::new("runuser");
                c.args(["-u", SERVICE_USER, "--"]);
                c
            } else {
                let mut c = Command::new("su");
                c.args([SERVICE_USER, "-s", "/bin/sh", "-c", "exec \"$0\" \"$@\""]);
                c
            };
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    // pg_ctl's server inherits these; a null stdout keeps the test's output clean and lets
    // `output()` return once pg_ctl itself exits.
    let output = command
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Drops the databases earlier test processes of this machine left on a server they did not
/// own (`webhookd_test_<pid>_<n>` whose process is gone). Best effort: a database still in use
/// elsewhere is left alone, as PostgreSQL refuses to drop it.
fn drop_stale_databases(admin_url: &str) {
    let admin_url = admin_url.to_owned();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async move {
            let (client, connection) = connect_with_retry(&admin_url).await.ok()?;
            let driver = tokio::spawn(connection);
            let rows = client
                .query(
                    "SELECT datname::TEXT FROM pg_database WHERE datname LIKE 'webhookd\\_test\\_%'",
                    &[],
                )
                .await
                .ok()?;
            for row in rows {
                let name: String = row.get(0);
                if is_stale(&name) {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                        .await;
                }
            }
            drop(client);
            let _ = driver.await;
            Some(())
        })
    })
    .join();
}

/// Whether a test database's process, named in it, is gone from this machine.
fn is_stale(name: &str) -> bool {
    let pid = name
        .strip_prefix("webhookd_test_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// `CREATE DATABASE name` on the server of `admin_url`, from a thread with its own runtime so
/// this works from sync and async callers alike.
fn create_database(admin_url: &str, name: &str) -> Result<(), String> {
    run_admin(admin_url, format!("CREATE DATABASE \"{name}\""))
}

/// Runs one statement as the administrator on the server of `admin_url`.
pub fn run_admin(admin_url: &str, statement: String) -> Result<(), String> {
    let admin_url = admin_url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let (client, connection) = connect_with_retry(&admin_url).await?;
            let driver = tokio::spawn(connection);
            let result = client
                .batch_execute(&statement)
                .await
                .map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            result
        })
    })
    .join()
    .map_err(|_| "the database thread panicked".to_owned())?
}

async fn connect_with_retry(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    String,
> {
    let mut attempts = 0;
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok(pair) => return Ok(pair),
            // Many tests ask for databases at once; a freshly started server may briefly
            // refuse connections while it finishes starting.
            Err(_) if attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(format!("connecting to the test PostgreSQL: {e}")),
        }
    }
}
