//! The environment layer of the configuration: `REBILLY_WEBHOOKD__SECTION__KEY` variables.

use super::ENV_PREFIX;
use config::{Map, Source, Value, ValueKind};

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 4] = [
    "auth.allowed_networks",
    "auth.header.values",
    "auth.hmac.secrets",
    "auth.trusted_proxies",
];

/// The `REBILLY_WEBHOOKD__SECTION__KEY` layer. Every value stays the text it was given: the
/// typed settings convert numbers and booleans where a field asks for one, so a secret such as
/// `000123` is never re-typed into `123`. Only the list keys are split, on commas.
#[derive(Debug, Clone)]
pub(super) struct EnvironmentLayer(Vec<(String, String)>);

impl EnvironmentLayer {
    pub(super) fn new(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        let prefix = format!("{ENV_PREFIX}__");
        let entries = variables
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name
                    .strip_prefix(&prefix)?
                    .to_lowercase()
                    .replace("__", ".");
                Some((key, value))
            })
            .collect();
        Self(entries)
    }
}

impl Source for EnvironmentLayer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let origin = "the environment".to_owned();
        let entries = self.0.iter().map(|(key, value)| {
            let kind = if LIST_KEYS.contains(&key.as_str()) {
                ValueKind::Array(
                    value
                        .split(',')
                        .map(|item| Value::new(Some(&origin), item.trim().to_owned()))
                        .collect(),
                )
            } else {
                ValueKind::String(value.clone())
            };
            (key.clone(), Value::new(Some(&origin), kind))
        });
        Ok(entries.collect())
    }
}
