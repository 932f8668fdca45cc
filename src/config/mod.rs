//! Configuration: embedded defaults, then an optional TOML file, then `REBILLY_WEBHOOKD__*`
//! environment variables, deserialized into typed settings and validated once at start-up.

use crate::secret::{self, Secret};
use config::{Config, File, FileFormat};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod environment;
mod validate;

use environment::EnvironmentLayer;

const DEFAULTS: &str = include_str!("../defaults.toml");
const ENV_PREFIX: &str = "REBILLY_WEBHOOKD";

/// Shortest `api.token` accepted when the daemon listens beyond loopback.
pub const MIN_EXPOSED_TOKEN_CHARS: usize = 32;

/// Secrets copied from `config.example.toml` start with `change-me`; the signing secret there is
/// the public example of the Standard Webhooks documentation.
fn is_example_secret(value: &str) -> bool {
    const PUBLIC_EXAMPLES: [&str; 1] = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"];
    value.trim().to_ascii_lowercase().starts_with("change-me") || PUBLIC_EXAMPLES.contains(&value)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// The smallest database cap: below it the schema alone nearly fills it, and a cap that
/// small is more likely a unit mistaken (MiB for bytes) than a wish.
const MIN_DATABASE_CAP: u64 = 1024 * 1024;

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub handlers: Vec<HandlerSettings>,
    pub rebilly: RebillySettings,
    pub sync: SyncSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address and port to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest accepted webhook body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, from its headers to its answer, in seconds; also the longest
    /// wait for a concurrency slot.
    pub request_timeout_seconds: u64,
    /// Most query, admin and probe requests served at the same time. A request that cannot get
    /// a slot within `request_timeout_seconds` is answered 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Most webhook deliveries served at the same time, counted apart from the other routes so
    /// that they cannot crowd deliveries out; bounded by the request timeout in the same way.
    pub max_concurrent_deliveries: usize,
    /// How long a `/readyz` answer is reused, in milliseconds; concurrent probes share one
    /// database write. 0 probes the database on every request.
    pub readiness_cache_ms: u64,
    /// Time given to in-flight requests and handlers after SIGTERM, in seconds.
    pub shutdown_grace_seconds: u64,
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    pub fn readiness_cache(&self) -> Duration {
        Duration::from_millis(self.readiness_cache_ms)
    }

    /// Whether only this machine can connect.
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

/// Which database holds the event log and the projection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// An embedded SQLite file (`storage.path`), for one daemon.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`storage.url`) that several daemons may share.
    Postgres,
}

/// `Debug` is derived: the URL and the password are [`Secret`]s and print redacted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// SQLite database file, created with its parent folder if missing.
    pub path: PathBuf,
    /// PostgreSQL connection URL (`postgres://user:password@host:5432/db?sslmode=require`) or
    /// key=value string; a secret, as it may carry the password.
    pub url: Option<Secret>,
    /// PostgreSQL password, when the URL carries none (so that it can come from the
    /// environment: `REBILLY_WEBHOOKD__STORAGE__PASSWORD`).
    pub password: Option<Secret>,
    /// Most PostgreSQL connections this daemon opens (the writer, readers, handlers).
    pub max_connections: usize,
    /// Longest wait for a PostgreSQL connection (connecting included), in seconds, before a
    /// request is answered 503.
    pub connect_timeout_seconds: u64,
    /// PEM file of the authorities that sign the PostgreSQL server's certificate (a managed
    /// database's own CA), trusted instead of the Mozilla roots.
    pub tls_ca_file: Option<PathBuf>,
    /// `full` syncs every commit to disk; `normal` may lose the last commits on power loss.
    pub synchronous: Synchronous,
    /// Deliveries waiting for the writer before new ones are answered 503.
    pub queue_capacity: usize,
    /// Most deliveries committed in one transaction.
    pub max_batch: usize,
    /// Raw bodies older than this many days are pruned; 0 keeps them for ever.
    pub retention_days: u64,
    /// Largest size of the database file, in bytes (rounded down to whole pages; the WAL file
    /// comes on top). Past it, deliveries are answered 503 until pruning frees room, as on a
    /// full disk. 0: no cap (the default); otherwise at least 1 MiB.
    pub max_size_bytes: u64,
}

impl StorageSettings {
    /// Where events are stored, for logs: the SQLite file, or only the word for PostgreSQL,
    /// whose URL is a secret.
    pub fn describe(&self) -> String {
        match self.backend {
            StorageBackend::Sqlite => self.path.display().to_string(),
            StorageBackend::Postgres => "PostgreSQL (storage.url)".to_owned(),
        }
    }
}

/// `Debug` is derived: the password is a [`Secret`] and prints redacted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub username: String,
    pub password: Secret,
}

/// An HTTP Digest credential (RFC 7616). `Debug` is derived: the password prints redacted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestCredential {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSecret {
    /// Header name, such as `X-Webhook-Token`.
    pub name: String,
    /// Accepted values; more than one during rotation.
    pub values: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSettings {
    /// `whsec_<base64>` secrets; any of them may match.
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between `webhook-timestamp` and now, in seconds.
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: u64,
}

fn default_tolerance() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HTTP Basic credentials; any of them is accepted.
    #[serde(default)]
    pub basic: Vec<BasicCredential>,
    /// HTTP Digest credentials; any of them is accepted. With Basic also configured, a delivery
    /// passes with either valid Basic or valid Digest credentials.
    #[serde(default)]
    pub digest: Vec<DigestCredential>,
    /// How long a Digest nonce stays valid after it was issued, in seconds.
    pub digest_nonce_seconds: u64,
    /// Key sealing Digest nonces, for daemons behind one address that must accept each other's
    /// nonces; unset, each process draws a random key at start-up.
    pub digest_nonce_key: Option<Secret>,
    /// A static secret header that must be present.
    pub header: Option<HeaderSecret>,
    /// Standard Webhooks signatures that must verify.
    pub hmac: Option<HmacSettings>,
    /// Source networks allowed to deliver; empty allows every source.
    #[serde(default)]
    pub allowed_networks: Vec<IpNet>,
    /// Header carrying the client address (such as `X-Forwarded-For`), read only when the
    /// connection comes from one of `trusted_proxies`.
    pub trusted_proxy_header: Option<String>,
    /// Networks of the reverse proxies whose `trusted_proxy_header` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Accept deliveries with no credential at all. Only for local experiments.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

impl AuthSettings {
    pub fn has_credential(&self) -> bool {
        !self.basic.is_empty()
            || !self.digest.is_empty()
            || self.header.is_some()
            || self.hmac.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer token for the query and admin endpoints; without it they answer 401.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `rebilly_webhookd=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// Rebilly's API, read by `sync`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebillySettings {
    /// Base URL of Rebilly's API: `https://api.rebilly.com`, or the sandbox
    /// `https://api-sandbox.rebilly.com`.
    pub api_url: String,
    /// Secret API key, sent as `REB-APIKEY`; `sync` needs one. Never printed.
    pub api_key: Option<Secret>,
    /// Sent as `Organization-Id` when not empty (accounts with several organizations).
    pub organization_id: String,
}

/// `sync`: how the Customers API is read, and how often `serve` reconciles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// `serve` runs an incremental sync this often, in seconds; 0 never does.
    pub interval_seconds: u64,
    /// Customers asked for per page, 2 to 1000 (Rebilly's largest page).
    pub page_size: u32,
    /// An incremental sync starts this many seconds before where the last one ended, because
    /// Rebilly's list may show a change later than newer ones; 0 starts exactly at the mark.
    pub look_back_seconds: u64,
    /// Longest one API request may take, from connecting to the last byte, in seconds.
    pub request_timeout_seconds: u64,
    /// Attempts per page on network errors and 5xx answers before the sync gives up.
    pub max_attempts: u32,
    /// First retry delay, in milliseconds; doubles with every failure, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in milliseconds (a `429`'s `Retry-After` is honoured as given).
    pub backoff_max_ms: u64,
}

impl SyncSettings {
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_seconds > 0).then(|| Duration::from_secs(self.interval_seconds))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }
}

/// An asynchronous handler, fed from the event log by its own cursor. (`deny_unknown_fields`
/// does not combine with the flattened `kind`, so unknown keys here are not caught.)
#[derive(Debug, Clone, Deserialize)]
pub struct HandlerSettings {
    /// Unique name; it keys the handler's cursor and its dead events.
    pub name: String,
    #[serde(flatten)]
    pub kind: HandlerKind,
    /// Attempts before an event is marked dead.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, in milliseconds; doubles with every failure.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Where a handler seen for the first time starts in the event log: `now` (the default)
    /// or `beginning`. Later starts resume from the handler's cursor.
    #[serde(default)]
    pub start: HandlerStart,
}

/// Where a new handler starts reading the event log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerStart {
    /// After the newest event at the handler's first start: it sees only what arrives later.
    #[default]
    Now,
    /// From the first event still in the log. Events whose bodies retention already pruned
    /// are skipped, never dispatched empty.
    Beginning,
}

fn default_max_attempts() -> u32 {
    8
}
fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    300_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HandlerKind {
    /// Posts each event's raw body to `url`.
    Forward {
        /// Target URL; redirects are not followed.
        url: String,
        /// Credentials sent to the target.
        basic: Option<BasicCredential>,
        /// Longest one attempt may take, in seconds; at least 1.
        #[serde(default = "default_forward_timeout")]
        timeout_seconds: u64,
    },
    /// Writes one structured log line per event.
    Log,
}

fn default_forward_timeout() -> u64 {
    10
}

impl Settings {
    /// Loads the layers and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        // Variables that are not UTF-8 cannot be ours (`std::env::vars` would panic on them).
        let variables = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        Self::load_with_environment(file, variables)
    }

    /// Loads with the given environment variables instead of the process's own.
    pub fn load_with_environment(
        file: Option<&Path>,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let environment = EnvironmentLayer::new(variables);
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Settings::load(Some(file.path()))
    }

    #[test]
    fn the_embedded_defaults_load() {
        let settings = Settings::load(None).unwrap();
        assert_eq!(settings.server.max_body_bytes, 1024 * 1024);
        assert_eq!(settings.storage.synchronous, Synchronous::Full);
        assert!(settings.require_webhook_credential().is_err());
    }

    #[test]
    fn errors_name_the_bad_key() {
        let error = load_toml("[server]\nmax_body_bytes = 0\n").unwrap_err();
        assert!(
            error.to_string().contains("server.max_body_bytes"),
            "{error}"
        );
        let error = load_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(error.to_string().contains("listen"), "{error}");
        let error = load_toml("[auth.hmac]\nsecrets = [\"whsec_!!\"]\n").unwrap_err();
        assert!(
            error.to_string().contains("auth.hmac.secrets[0]"),
            "{error}"
        );
    }

    #[test]
    fn a_database_cap_is_none_or_at_least_one_mebibyte() {
        let error = load_toml("[storage]\nmax_size_bytes = 4096\n").unwrap_err();
        assert!(
            error.to_string().contains("storage.max_size_bytes"),
            "{error}"
        );
        for fine in ["0", "1048576", "10737418240"] {
            let settings = load_toml(&format!("[storage]\nmax_size_bytes = {fine}\n")).unwrap();
            assert_eq!(settings.storage.max_size_bytes.to_string(), fine);
        }
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let settings = load_toml(
            "[[auth.basic]]\nusername = \"rebilly\"\npassword = \"hunter2-very-secret\"\n\
             [api]\ntoken = \"token-token-token-token\"\n",
        )
        .unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("token-token"), "{printed}");
        assert!(printed.contains("rebilly"));
    }

    #[test]
    fn postgres_needs_a_url_that_never_reaches_messages_or_debug_output() {
        let error = load_toml("[storage]\nbackend = \"postgres\"\n").unwrap_err();
        assert!(error.to_string().contains("storage.url"), "{error}");
        let error = load_toml("[storage]\nbackend = \"mysql\"\n").unwrap_err();
        assert!(error.to_string().contains("backend"), "{error}");
        let error = load_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@db/app?sslmode=maybe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("storage.url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let settings = load_with_env(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@db/app\"\n",
            &[(
                "REBILLY_WEBHOOKD__STORAGE__PASSWORD",
                "from-the-environment",
            )],
        )
        .unwrap();
        assert_eq!(settings.storage.backend, StorageBackend::Postgres);
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("from-the-environment"), "{printed}");
        assert_eq!(
            settings.storage.password.as_ref().map(Secret::expose),
            Some("from-the-environment")
        );
        assert_eq!(
            Settings::load(None).unwrap().storage.backend,
            StorageBackend::Sqlite
        );
    }

    #[test]
    fn the_rebilly_api_key_is_redacted_and_required_for_scheduled_sync() {
        let settings = load_toml(
            "[rebilly]\napi_key = \"sk_live_do-not-print\"\n[sync]\ninterval_seconds = 60\n",
        )
        .unwrap();
        assert_eq!(settings.sync.interval(), Some(Duration::from_secs(60)));
        assert!(!format!("{settings:?}").contains("do-not-print"));
        let error = load_toml("[sync]\ninterval_seconds = 60\n").unwrap_err();
        assert!(error.to_string().contains("rebilly.api_key"), "{error}");
        let error = load_toml("[sync]\npage_size = 5000\n").unwrap_err();
        assert!(error.to_string().contains("sync.page_size"), "{error}");
        let error = load_toml("[rebilly]\napi_url = \"ftp://x\"\n").unwrap_err();
        assert!(error.to_string().contains("rebilly.api_url"), "{error}");
        let error = load_toml("[rebilly]\norganization_id = \"a\\nb\"\n").unwrap_err();
        assert!(
            error.to_string().contains("rebilly.organization_id"),
            "{error}"
        );
    }

    #[test]
    fn handlers_are_read_from_a_tagged_list() {
        let settings = load_toml(
            "[[handlers]]\nname = \"crm\"\nkind = \"forward\"\nurl = \"http://127.0.0.1:9/x\"\n\
             [[handlers]]\nname = \"audit\"\nkind = \"log\"\n",
        )
        .unwrap();
        assert_eq!(settings.handlers.len(), 2);
        assert!(matches!(settings.handlers[1].kind, HandlerKind::Log));
        assert_eq!(settings.handlers[0].start, HandlerStart::Now);
        let settings =
            load_toml("[[handlers]]\nname = \"audit\"\nkind = \"log\"\nstart = \"beginning\"\n")
                .unwrap();
        assert_eq!(settings.handlers[0].start, HandlerStart::Beginning);
        let error = load_toml(
            "[[handlers]]\nname = \"a\"\nkind = \"log\"\n[[handlers]]\nname = \"a\"\nkind = \"log\"\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("handlers[1].name"), "{error}");
    }

    fn load_with_env(text: &str, variables: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let variables = variables
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Settings::load_with_environment(Some(file.path()), variables)
    }

    #[test]
    fn environment_secrets_are_taken_verbatim() {
        let settings = load_with_env(
            "[auth.header]\nname = \"X-Token\"\nvalues = [\"x\"]\n",
            &[
                (
                    "REBILLY_WEBHOOKD__API__TOKEN",
                    "000123000123000123000123000123000",
                ),
                (
                    "REBILLY_WEBHOOKD__AUTH__HEADER__VALUES",
                    "000123,1e5, true ",
                ),
                ("REBILLY_WEBHOOKD__AUTH__DIGEST_NONCE_KEY", "0001"),
                ("REBILLY_WEBHOOKD__SERVER__MAX_BODY_BYTES", "2048"),
                ("REBILLY_WEBHOOKD__AUTH__ALLOW_UNAUTHENTICATED", "true"),
                ("REBILLY_WEBHOOKD__SERVER__LISTEN", "0.0.0.0:8080"),
                ("OTHER__API__TOKEN", "ignored"),
            ],
        )
        .unwrap();
        let token = settings.api.token.as_ref().unwrap();
        assert_eq!(token.expose(), "000123000123000123000123000123000");
        let values: Vec<&str> = settings
            .auth
            .header
            .as_ref()
            .unwrap()
            .values
            .iter()
            .map(Secret::expose)
            .collect();
        assert_eq!(values, ["000123", "1e5", "true"]);
        assert_eq!(
            settings.auth.digest_nonce_key.as_ref().unwrap().expose(),
            "0001"
        );
        assert_eq!(
            settings.server.max_body_bytes, 2048,
            "numbers still convert"
        );
        assert!(
            settings.auth.allow_unauthenticated,
            "booleans still convert"
        );
        assert_eq!(settings.server.listen.port(), 8080);
    }

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    fn exposed(extra: &[(&str, &str)]) -> Result<(), ConfigError> {
        let mut variables = vec![("REBILLY_WEBHOOKD__SERVER__LISTEN", "0.0.0.0:8080")];
        variables.extend_from_slice(extra);
        load_with_env(EXAMPLE, &variables)?.require_safe_exposure()
    }

    #[test]
    fn the_example_file_runs_on_loopback_only() {
        let settings = load_with_env(EXAMPLE, &[]).unwrap();
        assert!(settings.server.is_loopback());
        assert!(settings.require_safe_exposure().is_ok());
        let error = exposed(&[]).unwrap_err().to_string();
        assert!(error.contains("auth.basic[0].password"), "{error}");
    }

    #[test]
    fn beyond_loopback_example_and_short_secrets_are_refused_by_name() {
        let long = "Zk3q9v0s8w7x6y5z4a3b2c1d0e9f8g7h6";
        let error = exposed(&[("REBILLY_WEBHOOKD__API__TOKEN", long)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.basic[0].password"), "{error}");
        let own_basic = "[[auth.basic]]\nusername = \"rebilly\"\npassword = \"a-real-password\"\n";
        let check = |token: &str| {
            load_with_env(
                own_basic,
                &[
                    ("REBILLY_WEBHOOKD__SERVER__LISTEN", "[::]:8080"),
                    ("REBILLY_WEBHOOKD__API__TOKEN", token),
                ],
            )
            .unwrap()
            .require_safe_exposure()
        };
        assert!(check(long).is_ok());
        let error = check("change-me-to-a-long-random-api-token-000")
            .unwrap_err()
            .to_string();
        assert!(error.contains("api.token"), "{error}");
        let error = check("short-token-of-31-characters-xx")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("api.token") && error.contains("32"),
            "{error}"
        );
        let error = load_with_env(
            own_basic,
            &[("REBILLY_WEBHOOKD__SERVER__LISTEN", "[::]:8080")],
        )
        .unwrap()
        .require_safe_exposure()
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("api.token") && error.contains("must be set"),
            "a missing token is named: {error}"
        );
    }

    #[test]
    fn a_forward_timeout_of_zero_is_refused() {
        let error = load_toml(
            "[[handlers]]\nname = \"crm\"\nkind = \"forward\"\nurl = \"https://crm.example.com/\"\n\
             timeout_seconds = 0\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("handlers[0].timeout_seconds"),
            "{error}"
        );
    }

    #[test]
    fn risky_but_allowed_settings_warn() {
        let settings = load_toml(
            "[auth]\ntrusted_proxy_header = \"X-Forwarded-For\"\ntrusted_proxies = [\"0.0.0.0/0\"]\n\
             [[handlers]]\nname = \"crm\"\nkind = \"forward\"\nurl = \"http://crm.example.com/\"\n",
        )
        .unwrap();
        let warnings = settings.warnings().join("\n");
        assert!(warnings.contains("auth.trusted_proxies"), "{warnings}");
        assert!(warnings.contains("handlers[0].url"), "{warnings}");
        assert!(Settings::load(None).unwrap().warnings().is_empty());
    }

    #[test]
    fn digest_credentials_are_validated_by_key() {
        let error =
            load_toml("[[auth.digest]]\nusername = \"a:b\"\npassword = \"p\"\n").unwrap_err();
        assert!(
            error.to_string().contains("auth.digest[0].username"),
            "{error}"
        );
        let error = load_toml("[[auth.digest]]\nusername = \"a\"\npassword = \"\"\n").unwrap_err();
        assert!(
            error.to_string().contains("auth.digest[0].password"),
            "{error}"
        );
        let settings =
            load_toml("[[auth.digest]]\nusername = \"rebilly\"\npassword = \"p\"\n").unwrap();
        assert!(settings.require_webhook_credential().is_ok());
    }
}
