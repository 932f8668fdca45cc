//! Connecting to PostgreSQL: the connection settings read from `storage.url` (and
//! `storage.password`), TLS when the URL asks for it, and the pool every query draws from.
//!
//! `sslmode=require`, `verify-ca` and `verify-full` connect over TLS (rustls) and always verify
//! the server's certificate and its host name, as `verify-full` does, against the Mozilla roots
//! (webpki-roots) or, when `storage.tls_ca_file` is set, against its authorities alone. `disable`, `prefer` (the driver's default) and no `sslmode` connect
//! without TLS.

use crate::config::StorageSettings;
use crate::secret::Secret;
use crate::storage::StorageError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::path::Path;
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
    /// The authorities `storage.tls_ca_file` names, trusted instead of the Mozilla roots.
    roots: Option<Arc<rustls::RootCertStore>>,
}

/// The certificates of a PEM file, as the only authorities to trust; the reason says what is
/// wrong with the file.
pub fn authorities(file: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(file)
        .map_err(|error| format!("cannot be read as PEM: {error}"))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| format!("holds an unreadable certificate: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("holds a certificate rustls refuses: {error}"))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".to_owned());
    }
    Ok(roots)
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
    Ok(Target {
        config,
        tls,
        roots: None,
    })
}

impl Target {
    pub fn from_settings(settings: &StorageSettings) -> Result<Self, StorageError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            StorageError::Settings(
                "storage.url is required when storage.backend = \"postgres\"".to_owned(),
            )
        })?;
        let mut target = parse(url.expose())
            .map_err(|reason| StorageError::Settings(format!("storage.url {reason}")))?;
        if let Some(file) = &settings.tls_ca_file {
            let roots = authorities(file).map_err(|reason| {
                StorageError::Settings(format!("storage.tls_ca_file {reason}"))
            })?;
            target.roots = Some(Arc::new(roots));
        }
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
            Manager::from_config(self.config.clone(), self.tls_connector(), manager_config)
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
            .map_err(|error| {
                StorageError::Settings(format!("cannot build the PostgreSQL pool: {error}"))
            })
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
            let (client, connection) = self.config.connect(self.tls_connector()).await?;
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

impl Target {
    fn tls_connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let roots = match &self.roots {
            Some(roots) => (**roots).clone(),
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        tls_connector(roots)
    }
}

fn tls_connector(roots: rustls::RootCertStore) -> tokio_postgres_rustls::MakeRustlsConnect {
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
        let _ = parse("postgres://u@db/app?sslmode=require")
            .unwrap()
            .tls_connector();
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

    /// A throwaway self-signed authority, certificate only.
    const TEST_AUTHORITY: &str = "-----BEGIN CERTIFICATE-----\n\
MIIDEzCCAfugAwIBAgIUA+Gyg0Kn6SyNCAi5H6bM1dlhX7kwDQYJKoZIhvcNAQEL\n\
BQAwGTEXMBUGA1UEAwwOcGdjb3JlIHRlc3QgQ0EwHhcNMjYxMjA3MDIxNDI4WhcN\n\
MjYxMjA5MDIxNDI4WjAZMRcwFQYDVQQDDA5wZ2NvcmUgdGVzdCBDQTCCASIwDQYJ\n\
KoZIhvcNAQEBBQADggEPADCCAQoCggEBAJETSSbclglphkWGw1kiJl8KR9sceoLK\n\
UY6u3W37k2AEa/9JoBeVF2junev6q/2tsfc2iEI53wnEDDFJHnWip+93V5z2KCFq\n\
C5cLy/4+k6+DuhHDw2IrIQWHAcVLwMAMGjBJychFUtWBAy3+p/hBYcJLjSMzq/+Z\n\
9UUb9+4yiOUvUJ+3kAdXPOrbScSBGKCwZNkzPJ5wzuKh7l3r4F7AXlZOi/bbJyCG\n\
fsS33hx9VMPUboMFx2VJDmEL7lQDBSZxtzfnmOBmUDw4mYl+7u1+qY55YcYCzQAY\n\
ZyBU0DNMDrmCX3afa9g0ttPThBEoaI0vchOE65UJzbpaXl6E/2LGjc8CAwEAAaNT\n\
MFEwHQYDVR0OBBYEFEEKojel+XRjqO1FVQrQtGHnlcltMB8GA1UdIwQYMBaAFEEK\n\
ojel+XRjqO1FVQrQtGHnlcltMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQEL\n\
BQADggEBACF4lFZXZcwC1VkSNnw95xIEulW/B8CXUgzfQbSb+MpNcqQTWkQnII3R\n\
n4jraOLxQdK3mcOFH6cXhitQzNoE1//FGMoBEFnZ/hAT0wPUIprblUi+TMJpENd8\n\
DesjfFWTDM0rnqVCra4jO8GSuz6pXUafHNBl0B+pSHJFpVlN8wxjskVWfMcGfaUD\n\
WB+tNczwItqUoK70gQ6FCv+kf6FtI53xcQUFlEi19/jhuq28ZhoopbBjAqaVoMdb\n\
xEnHHIDdoOshFZ+xsIPp70OQFCWnrEmuPSXVHiwbLkIm1Hu3tfjsbN+5M+b8lb0R\n\
ww+NrkMHr6e6gDIAJlkzLDHyCk5k52Q=\n\
-----END CERTIFICATE-----";

    #[test]
    fn an_authorities_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, format!("{TEST_AUTHORITY}\n")).unwrap();
        assert_eq!(authorities(&good).unwrap().len(), 1);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(authorities(&empty).unwrap_err(), "holds no certificate");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(authorities(&garbage).is_err());
        assert!(authorities(&dir.path().join("missing.pem")).is_err());
    }

    fn settings(url: &str, password: Option<&str>) -> StorageSettings {
        StorageSettings {
            backend: crate::config::StorageBackend::Postgres,
            path: "unused.db".into(),
            url: Some(Secret::new(url)),
            password: password.map(Secret::new),
            max_connections: 4,
            connect_timeout_seconds: 3,
            tls_ca_file: None,
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
