//! What became of one delivery: the status the event log records, the webhook answers with and
//! the event list filters on. It belongs to no layer, so that each can name it.

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Applied,
    Stale,
    Duplicate,
    Ignored,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Applied,
        Self::Stale,
        Self::Duplicate,
        Self::Ignored,
        Self::Rejected,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_as_their_lowercase_names() {
        for status in Status::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.as_str().to_owned())
            );
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }
}
