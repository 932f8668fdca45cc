//! Connecting to PostgreSQL: the connection settings read from `storage.url` (and
//! `storage.password`), TLS when the URL asks for it, and the pool every query draws from.
//!
//! `sslmode=require`, `verify-ca` and `verify-full` connect over TLS (rustls) and always verify
//! the server's certificate against the Mozilla roots (webpki-roots) and its host name, as
//! `verify-full` does. `disable`, `prefer` (the driver's default) and no `sslmode` connect
//! without TLS.

use crate::config::StorageSettings;
use crate::secret::Secret;
use crate::storage::StorageError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// Reported by every session of the daemon (`pg_stat_activity.application_name`).
const APPLICATION_NAME: &str = "rebilly-webhookd";

/// How to reach the database, parsed once; holds the password, so it is never printed.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: bool,
}

/// Whether `url` is a usable connection string; the reason never quotes it.
pub fn check_url(url: &Secret) -> Result<(), String> {
    parse(url.expose()).map(|_| ())
}

fn parse(url: &str) -> Result<Target, String> {
    // The driver knows only disable, prefer and require; rustls verifies the certificate and
    // host name in every TLS mode, so the two verifying modes are `require` here.
    let normalized = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let config = tokio_postgres::Config::from_str(&normalized)
        .map_err(|error| format!("is not a PostgreSQL connection URL: {error}"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host".to_owned());
    }
    let tls = config.get_ssl_mode() == SslMode::Require;
    Ok(Target { config, tls })
}

impl Target {
    pub fn from_settings(settings: &StorageSettings) -> Result<Self, StorageError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            StorageError::Settings("is required when storage.backend = \"postgres\"".to_owned())
        })?;
        let mut target = parse(url.expose()).map_err(StorageError::Settings)?;
        if target.config.get_password().is_none()
            && let Some(password) = &settings.password
        {
            target.config.password(password.expose());
        }
        let timeout = Duration::from_secs(settings.connect_timeout_seconds);
        if target.config.get_connect_timeout().is_none() {
            target.config.connect_timeout(timeout);
        }
        if target.config.get_application_name().is_none() {
            target.config.application_name(APPLICATION_NAME);
        }
        Ok(target)
    }

    /// The pool every query draws from. Nothing connects yet: connections open on demand
    /// (and again after the database comes back), each bounded by `connect_timeout_seconds`.
    pub fn pool(&self, settings: &StorageSettings) -> Result<Pool, StorageError> {
        let manager_config = ManagerConfig {
            // A connection the server closed is noticed by its driver; checking the others
            // with a query before each use would cost a round trip every time.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if self.tls {
            Manager::from_config(self.config.clone(), tls_connector(), manager_config)
        } else {
            Manager::from_config(self.config.clone(), tokio_postgres::NoTls, manager_config)
        };
        let timeout = Some(Duration::from_secs(settings.connect_timeout_seconds));
        Pool::builder(manager)
            .max_size(settings.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|error| StorageError::Settings(format!("cannot build the pool: {error}")))
    }

    /// A connection of its own, outside the pool, whose messages (notifications) the caller
    /// reads from the returned connection.
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            Box<dyn ConnectionMessages + Send + Unpin>,
        ),
        StorageError,
    > {
        if self.tls {
            let (client, connection) = self.config.connect(tls_connector()).await?;
            Ok((client, Box::new(connection)))
        } else {
            let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
            Ok((client, Box::new(connection)))
        }
    }
}

/// A driver connection whose messages can be read one at a time, whatever its TLS stream.
pub trait ConnectionMessages {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> ConnectionMessages for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_follows_the_sslmode_of_the_url() {
        for (url, tls) in [
            ("postgres://u@db.example.com/app", false),
            ("postgres://u@db.example.com/app?sslmode=disable", false),
            ("postgres://u@db.example.com/app?sslmode=prefer", false),
            ("postgres://u@db.example.com/app?sslmode=require", true),
            ("postgres://u@db.example.com/app?sslmode=verify-ca", true),
            ("postgres://u@db.example.com/app?sslmode=verify-full", true),
            ("host=db.example.com user=u sslmode=verify-full", true),
        ] {
            assert_eq!(parse(url).unwrap().tls, tls, "{url}");
        }
        // Building a connector must not panic (a missing crypto provider would).
        let _ = tls_connector();
    }

    #[test]
    fn a_bad_url_is_refused_without_being_quoted() {
        for url in [
            "postgres://u:hunter2@db/app?sslmode=sometimes",
            "mysql://u:hunter2@db/app",
            "postgres://u:hunter2@/app",
        ] {
            let reason = parse(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(!reason.contains("hunter2"), "{reason}");
        }
    }

    fn settings(url: &str, password: Option<&str>) -> StorageSettings {
        StorageSettings {
            backend: crate::config::StorageBackend::Postgres,
            path: "unused.db".into(),
            url: Some(Secret::new(url)),
            password: password.map(Secret::new),
            max_connections: 4,
            connect_timeout_seconds: 3,
            synchronous: crate::config::Synchronous::Full,
            queue_capacity: 8,
            max_batch: 8,
            retention_days: 0,
            max_size_bytes: 0,
        }
    }

    #[test]
    fn the_password_comes_from_the_url_first_then_from_the_settings() {
        let target =
            Target::from_settings(&settings("postgres://u:inurl@db/app", Some("aside"))).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"inurl"[..]));
        let target =
            Target::from_settings(&settings("postgres://u@db/app", Some("aside"))).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"aside"[..]));
        assert_eq!(
            target.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(target.config.get_application_name(), Some(APPLICATION_NAME));
    }
}
