//! Identifiers: workflow and task ids (UUIDv7, so they sort by creation),
//! server ids (parsed once at the edge), and the broker user a server's
//! worker connects as.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest server id (Nova ids are 36-character UUIDs).
pub const MAX_SERVER_ID_LEN: usize = 64;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, " (a UUIDv7, so ids sort by creation time).")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh id (UUIDv7: time-ordered).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(WorkflowId, "workflow");
uuid_id!(TaskId, "task");

/// A target server: 1–64 characters of `[A-Za-z0-9_-]` (Nova ids are UUIDs).
/// The charset keeps it safe inside queue names, routing keys and regexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServerId(String);

impl ServerId {
    /// # Errors
    /// An empty, too long or non-`[A-Za-z0-9_-]` id.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_SERVER_ID_LEN {
            return Err(format!(
                "server_id must be 1 to {MAX_SERVER_ID_LEN} characters"
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("server_id may only contain A-Z, a-z, 0-9, '_' and '-'".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServerId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The broker user of a registered server: `bora-srv-<server_id>`. The
/// broker validates a reply's `user_id` against it, so it names the sender.
pub fn broker_user(server: &ServerId) -> String {
    format!("{BROKER_USER_PREFIX}{server}")
}

/// Whether `user` is the broker user of the server `server` names.
pub fn is_broker_user_of(user: &str, server: &str) -> bool {
    user.strip_prefix(BROKER_USER_PREFIX) == Some(server)
}

const BROKER_USER_PREFIX: &str = "bora-srv-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids() {
        assert!(ServerId::parse("6f1c2b9e-0d3a-4c1e-9a7b-1234567890ab").is_ok());
        assert!(ServerId::parse("web_1").is_ok());
        assert!(ServerId::parse("").is_err());
        assert!(ServerId::parse("a.b").is_err());
        assert!(ServerId::parse("a b").is_err());
        assert!(ServerId::parse(&"x".repeat(65)).is_err());
    }
}
