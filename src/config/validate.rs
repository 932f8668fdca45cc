//! Validation of the loaded settings: every check names the key to fix, and the checks that
//! depend on where the daemon listens (exposure beyond loopback) or warn instead of refusing.

use super::*;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        if self.server.max_concurrent_requests == 0 {
            return Err(invalid(
                "server.max_concurrent_requests",
                "must be greater than 0",
            ));
        }
        if self.server.max_concurrent_deliveries == 0 {
            return Err(invalid(
                "server.max_concurrent_deliveries",
                "must be greater than 0",
            ));
        }
        if self.server.request_timeout_seconds == 0 {
            return Err(invalid(
                "server.request_timeout_seconds",
                "must be greater than 0",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(invalid("storage.path", "must not be empty"));
        }
        self.validate_postgres()?;
        if self.storage.queue_capacity == 0 {
            return Err(invalid("storage.queue_capacity", "must be greater than 0"));
        }
        if self.storage.max_batch == 0 {
            return Err(invalid("storage.max_batch", "must be greater than 0"));
        }
        if (1..MIN_DATABASE_CAP).contains(&self.storage.max_size_bytes) {
            return Err(invalid(
                "storage.max_size_bytes",
                format!("must be 0 (no cap) or at least {MIN_DATABASE_CAP} bytes (1 MiB)"),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                "is not a tracing filter such as \"info\" or \"rebilly_webhookd=debug\"",
            ));
        }
        self.validate_auth()?;
        if let Some(token) = &self.api.token
            && token.expose().trim().is_empty()
        {
            return Err(invalid("api.token", "must not be empty"));
        }
        self.validate_handlers()?;
        self.validate_sync()
    }

    /// The PostgreSQL keys, checked whatever the backend when they are set, so that a mistake
    /// shows before the backend is switched; `storage.url` is required with `postgres`. A URL
    /// never appears in the message: it may carry the password.
    pub(super) fn validate_postgres(&self) -> Result<(), ConfigError> {
        let storage = &self.storage;
        if storage.max_connections == 0 {
            return Err(invalid("storage.max_connections", "must be greater than 0"));
        }
        if storage.connect_timeout_seconds == 0 {
            return Err(invalid(
                "storage.connect_timeout_seconds",
                "must be greater than 0",
            ));
        }
        if let Some(password) = &storage.password
            && password.expose().is_empty()
        {
            return Err(invalid("storage.password", "must not be empty when set"));
        }
        if let Some(file) = &storage.tls_ca_file {
            crate::storage::postgres::authorities(file)
                .map_err(|reason| invalid("storage.tls_ca_file", reason))?;
        }
        match &storage.url {
            None if storage.backend == StorageBackend::Postgres => Err(invalid(
                "storage.url",
                "is required when storage.backend = \"postgres\"",
            )),
            None => Ok(()),
            Some(url) => crate::storage::postgres::check_url(url)
                .map_err(|reason| invalid("storage.url", reason)),
        }
    }

    pub(super) fn validate_sync(&self) -> Result<(), ConfigError> {
        let url = reqwest::Url::parse(&self.rebilly.api_url)
            .map_err(|e| invalid("rebilly.api_url", format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("rebilly.api_url", "must be an http or https URL"));
        }
        if let Some(key) = &self.rebilly.api_key {
            if key.expose().trim().is_empty() {
                return Err(invalid("rebilly.api_key", "must not be empty"));
            }
            if axum::http::HeaderValue::from_str(key.expose()).is_err() {
                return Err(invalid("rebilly.api_key", "must be printable ASCII"));
            }
        }
        if axum::http::HeaderValue::from_str(&self.rebilly.organization_id).is_err() {
            return Err(invalid(
                "rebilly.organization_id",
                "must be printable ASCII",
            ));
        }
        if self.sync.interval_seconds > 0 && self.rebilly.api_key.is_none() {
            return Err(invalid(
                "rebilly.api_key",
                "is required when sync.interval_seconds is not 0",
            ));
        }
        if !(2..=1000).contains(&self.sync.page_size) {
            return Err(invalid("sync.page_size", "must be between 2 and 1000"));
        }
        if self.sync.request_timeout_seconds == 0 {
            return Err(invalid(
                "sync.request_timeout_seconds",
                "must be greater than 0",
            ));
        }
        if self.sync.max_attempts == 0 {
            return Err(invalid("sync.max_attempts", "must be greater than 0"));
        }
        if self.sync.backoff_initial_ms == 0
            || self.sync.backoff_max_ms < self.sync.backoff_initial_ms
        {
            return Err(invalid(
                "sync.backoff_initial_ms",
                "must be greater than 0 and at most sync.backoff_max_ms",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        for (i, credential) in self.auth.basic.iter().enumerate() {
            if credential.username.is_empty() || credential.username.contains(':') {
                return Err(invalid(
                    &format!("auth.basic[{i}].username"),
                    "must be non-empty and contain no ':'",
                ));
            }
            if credential.password.expose().is_empty() {
                return Err(invalid(
                    &format!("auth.basic[{i}].password"),
                    "must not be empty",
                ));
            }
        }
        for (i, credential) in self.auth.digest.iter().enumerate() {
            let name = &credential.username;
            if name.is_empty()
                || name.contains([':', '"', '\\'])
                || name.chars().any(char::is_control)
            {
                return Err(invalid(
                    &format!("auth.digest[{i}].username"),
                    "must be non-empty and contain no ':', '\"', '\\' or control character",
                ));
            }
            if credential.password.expose().is_empty() {
                return Err(invalid(
                    &format!("auth.digest[{i}].password"),
                    "must not be empty",
                ));
            }
        }
        if self.auth.digest_nonce_seconds == 0 {
            return Err(invalid(
                "auth.digest_nonce_seconds",
                "must be greater than 0",
            ));
        }
        if let Some(header) = &self.auth.header {
            if axum::http::HeaderName::try_from(header.name.as_str()).is_err() {
                return Err(invalid("auth.header.name", "is not a valid header name"));
            }
            if header.values.is_empty() || header.values.iter().any(|v| v.expose().is_empty()) {
                return Err(invalid(
                    "auth.header.values",
                    "must list at least one non-empty value",
                ));
            }
        }
        if let Some(hmac) = &self.auth.hmac {
            if hmac.secrets.is_empty() {
                return Err(invalid(
                    "auth.hmac.secrets",
                    "must list at least one secret",
                ));
            }
            for (i, secret) in hmac.secrets.iter().enumerate() {
                secret::decode_hmac_secret(secret.expose()).map_err(|reason| {
                    invalid(&format!("auth.hmac.secrets[{i}]"), reason.to_string())
                })?;
            }
        }
        if let Some(name) = &self.auth.trusted_proxy_header {
            if axum::http::HeaderName::try_from(name.as_str()).is_err() {
                return Err(invalid(
                    "auth.trusted_proxy_header",
                    "is not a valid header name",
                ));
            }
            if self.auth.trusted_proxies.is_empty() {
                return Err(invalid(
                    "auth.trusted_proxies",
                    "must list the proxies allowed to set auth.trusted_proxy_header",
                ));
            }
        }
        Ok(())
    }

    /// Listening beyond loopback, anyone on the network can try the credentials: refuses the
    /// example values shipped in `config.example.toml` and an `api.token` short enough to guess.
    /// On loopback the example file runs as it is, for trying the daemon locally.
    pub fn require_safe_exposure(&self) -> Result<(), ConfigError> {
        if self.server.is_loopback() {
            return Ok(());
        }
        for (key, value) in self.secrets() {
            if is_example_secret(value.expose()) {
                return Err(invalid(
                    &key,
                    format!(
                        "is an example value and the daemon listens on {} (beyond loopback): \
                         set a long random secret of your own",
                        self.server.listen
                    ),
                ));
            }
        }
        // Without a token the query endpoints answer 401 to everyone, but a deployment that
        // exposes the port and forgot the token is a mistake worth naming at start-up.
        let long_enough = self
            .api
            .token
            .as_ref()
            .is_some_and(|token| token.expose().chars().count() >= MIN_EXPOSED_TOKEN_CHARS);
        if !long_enough {
            return Err(invalid(
                "api.token",
                format!(
                    "must be set, at least {MIN_EXPOSED_TOKEN_CHARS} characters, when listening \
                     beyond loopback ({})",
                    self.server.listen
                ),
            ));
        }
        Ok(())
    }

    /// Every secret of the configuration with the key that holds it.
    pub(super) fn secrets(&self) -> Vec<(String, &Secret)> {
        let auth = &self.auth;
        let mut secrets = Vec::new();
        for (i, c) in auth.basic.iter().enumerate() {
            secrets.push((format!("auth.basic[{i}].password"), &c.password));
        }
        for (i, c) in auth.digest.iter().enumerate() {
            secrets.push((format!("auth.digest[{i}].password"), &c.password));
        }
        if let Some(header) = &auth.header {
            for (i, v) in header.values.iter().enumerate() {
                secrets.push((format!("auth.header.values[{i}]"), v));
            }
        }
        if let Some(hmac) = &auth.hmac {
            for (i, v) in hmac.secrets.iter().enumerate() {
                secrets.push((format!("auth.hmac.secrets[{i}]"), v));
            }
        }
        if let Some(key) = &auth.digest_nonce_key {
            secrets.push(("auth.digest_nonce_key".to_owned(), key));
        }
        if let Some(token) = &self.api.token {
            secrets.push(("api.token".to_owned(), token));
        }
        if let Some(password) = &self.storage.password {
            secrets.push(("storage.password".to_owned(), password));
        }
        secrets
    }

    /// Settings that are allowed but probably a mistake, one sentence each, to log at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let everything = |net: &IpNet| net.prefix_len() == 0;
        if self.auth.trusted_proxies.iter().any(everything) {
            warnings.push(
                "auth.trusted_proxies covers every address: any client can choose the address \
                 auth.allowed_networks sees; list only your proxies"
                    .to_owned(),
            );
        }
        for (i, handler) in self.handlers.iter().enumerate() {
            if let HandlerKind::Forward { url, .. } = &handler.kind
                && url.to_ascii_lowercase().starts_with("http://")
            {
                warnings.push(format!(
                    "handlers[{i}].url is plain http: customer data and credentials travel \
                     unencrypted"
                ));
            }
        }
        warnings
    }

    /// The webhook endpoint needs a credential unless the operator opted out on purpose.
    pub fn require_webhook_credential(&self) -> Result<(), ConfigError> {
        if self.auth.has_credential() || self.auth.allow_unauthenticated {
            return Ok(());
        }
        Err(invalid(
            "auth",
            "no webhook credential is configured: add [[auth.basic]], [[auth.digest]], \
             [auth.header] or [auth.hmac], or set auth.allow_unauthenticated = true to accept anonymous deliveries",
        ))
    }

    pub(super) fn validate_handlers(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, handler) in self.handlers.iter().enumerate() {
            let key = |field: &str| format!("handlers[{i}].{field}");
            let valid_name = !handler.name.is_empty()
                && handler
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(invalid(&key("name"), "must be letters, digits, '-' or '_'"));
            }
            if !names.insert(handler.name.as_str()) {
                return Err(invalid(&key("name"), "is used by another handler"));
            }
            if handler.max_attempts == 0 {
                return Err(invalid(&key("max_attempts"), "must be greater than 0"));
            }
            if handler.backoff_initial_ms == 0
                || handler.backoff_max_ms < handler.backoff_initial_ms
            {
                return Err(invalid(
                    &key("backoff_initial_ms"),
                    "must be greater than 0 and at most backoff_max_ms",
                ));
            }
            if let HandlerKind::Forward {
                url,
                timeout_seconds,
                ..
            } = &handler.kind
            {
                if *timeout_seconds == 0 {
                    return Err(invalid(&key("timeout_seconds"), "must be greater than 0"));
                }
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| invalid(&key("url"), format!("is not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(&key("url"), "must be an http or https URL"));
                }
            }
        }
        Ok(())
    }
}
