//! The RabbitMQ management HTTP API (`amqp.management_url`), through reqwest:
//! the broker users, permissions and limits of registered servers, the
//! deletion of their queues and connections, and policies. Only the calls
//! bora needs, each checked against RabbitMQ 3.10.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::SecretUrl;

/// A management API call that failed (most calls retry server errors and
/// transport failures a few times first).
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// `amqp.management_url` does not parse.
    #[error("invalid management url: {0}")]
    Url(String),
    /// No usable answer: unreachable, timed out, or a body that does not
    /// decode.
    #[error("management API unreachable: {0}")]
    Http(#[from] reqwest::Error),
    /// RabbitMQ answered with an error status.
    #[error("management API refused {what}: HTTP {status}: {body}")]
    Refused {
        /// The step that was refused, for the message.
        what: String,
        /// RabbitMQ's status.
        status: StatusCode,
        /// The start of RabbitMQ's answer (at most 300 characters), if kept.
        body: String,
    },
}

/// A client of the management API; cheap to clone.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

/// Percent-encodes one path segment (vhost, user or queue name).
fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Management {
    /// # Errors
    /// A URL that does not parse.
    pub fn new(url: &SecretUrl) -> Result<Self, ManagementError> {
        let mut u =
            url::Url::parse(url.expose()).map_err(|e| ManagementError::Url(e.to_string()))?;
        let user = decode(u.username());
        let password = u.password().map(decode).unwrap_or_default();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        let base = u.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            http,
            base,
            user,
            password,
        })
    }

    /// One API call; absent (404) counts as done. Transport errors and 5xx
    /// answers (the API under load drops connections) are tried again a few
    /// times: every call bora makes is idempotent.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<StatusCode, ManagementError> {
        Ok(self.send(method, path, body, what).await?.status())
    }

    /// [`Self::call`], keeping the answer (success or 404) for its body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<reqwest::Response, ManagementError> {
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), format!("{}/api/{path}", self.base))
                .basic_auth(&self.user, Some(&self.password));
            if let Some(b) = &body {
                req = req.json(b);
            }
            let retryable = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() || status == StatusCode::NOT_FOUND {
                        return Ok(resp);
                    }
                    let text: String = resp
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    let err = ManagementError::Refused {
                        what: what.to_owned(),
                        status,
                        body: text,
                    };
                    if !status.is_server_error() || attempt >= 4 {
                        return Err(err);
                    }
                    err
                }
                Err(e) if attempt >= 4 => return Err(e.into()),
                Err(e) => e.into(),
            };
            tracing::debug!(error = %retryable, attempt, "management API call failed; retrying");
            tokio::time::sleep(Duration::from_millis(150 * attempt)).await;
        }
    }

    /// Creates the user or sets its new password. Returns true if it was created.
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn put_user(&self, name: &str, password: &str) -> Result<bool, ManagementError> {
        let status = self
            .call(
                Method::PUT,
                &format!("users/{}", seg(name)),
                Some(json!({"password": password, "tags": ""})),
                "creating a user",
            )
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// Deletes a user (absent is fine).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn delete_user(&self, name: &str) -> Result<(), ManagementError> {
        self.call(
            Method::DELETE,
            &format!("users/{}", seg(name)),
            None,
            "deleting a user",
        )
        .await?;
        Ok(())
    }

    /// Sets a user's permissions on a vhost (regular expressions).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), ManagementError> {
        self.call(
            Method::PUT,
            &format!("permissions/{}/{}", seg(vhost), seg(user)),
            Some(json!({"configure": configure, "write": write, "read": read})),
            "setting permissions",
        )
        .await?;
        Ok(())
    }

    /// Sets a user's topic permissions on one topic exchange: which routing
    /// keys it may publish with (`write`) and bind with (`read`). Checked by
    /// the broker on top of the user's plain permissions.
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), ManagementError> {
        self.call(
            Method::PUT,
            &format!("topic-permissions/{}/{}", seg(vhost), seg(user)),
            Some(json!({"exchange": exchange, "write": write, "read": read})),
            "setting topic permissions",
        )
        .await?;
        Ok(())
    }

    /// Limits how many connections a user may hold at once.
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn set_connection_limit(&self, user: &str, max: u32) -> Result<(), ManagementError> {
        self.call(
            Method::PUT,
            &format!("user-limits/{}/max-connections", seg(user)),
            Some(json!({"value": max})),
            "setting a connection limit",
        )
        .await?;
        Ok(())
    }

    /// Closes every connection of a user; returns how many were open.
    ///
    /// Lists and closes them through `connections/username/{user}`, which
    /// reads the broker's connection tracking: a connection is there as soon
    /// as it opened. On RabbitMQ 3.10, `/api/connections` and
    /// `DELETE /api/connections/{name}` go through the statistics database,
    /// which learns of a connection only later: until then the list left it
    /// out, a delete by name answered 404 (counted as done), and the
    /// connection stayed open. The
    /// close goes out even when the list was empty (a connection may have
    /// opened in between); no user, or none open, is fine.
    ///
    /// # Errors
    /// The API is unreachable or refuses the list or the close.
    pub async fn close_connections_of(&self, user: &str) -> Result<usize, ManagementError> {
        let path = format!("connections/username/{}", seg(user));
        let resp = self
            .send(Method::GET, &path, None, "listing a user's connections")
            .await?;
        let open = if resp.status() == StatusCode::NOT_FOUND {
            0
        } else {
            resp.json::<Vec<serde::de::IgnoredAny>>().await?.len()
        };
        self.call(Method::DELETE, &path, None, "closing a user's connections")
            .await?;
        Ok(open)
    }

    /// Deletes a queue (absent is fine).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn delete_queue(&self, vhost: &str, queue: &str) -> Result<(), ManagementError> {
        self.call(
            Method::DELETE,
            &format!("queues/{}/{}", seg(vhost), seg(queue)),
            None,
            "deleting a queue",
        )
        .await?;
        Ok(())
    }

    /// Sets (creates or replaces) a policy on a vhost.
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn set_policy(
        &self,
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: &str,
        definition: Value,
    ) -> Result<(), ManagementError> {
        self.call(
            Method::PUT,
            &format!("policies/{}/{}", seg(vhost), seg(name)),
            Some(json!({"pattern": pattern, "apply-to": apply_to, "definition": definition, "priority": 0})),
            "setting a policy",
        )
        .await?;
        Ok(())
    }

    /// Creates a vhost (existing is fine).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn put_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        self.call(
            Method::PUT,
            &format!("vhosts/{}", seg(vhost)),
            None,
            "creating a vhost",
        )
        .await?;
        Ok(())
    }

    /// Deletes a vhost with everything in it (absent is fine).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        self.call(
            Method::DELETE,
            &format!("vhosts/{}", seg(vhost)),
            None,
            "deleting a vhost",
        )
        .await?;
        Ok(())
    }

    /// The cluster's nodes: the memory each uses, and its operating-system
    /// process id (`os_pid`, which RabbitMQ gives as a string).
    ///
    /// # Errors
    /// The API is unreachable or refuses.
    pub async fn nodes(&self) -> Result<Vec<Node>, ManagementError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            mem_used: u64,
            #[serde(default)]
            os_pid: Option<Value>,
        }
        let resp = self
            .http
            .get(format!("{}/api/nodes", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ManagementError::Refused {
                what: "listing nodes".to_owned(),
                status,
                body: String::new(),
            });
        }
        let nodes: Vec<Raw> = resp.json().await?;
        Ok(nodes
            .into_iter()
            .map(|n| Node {
                mem_used: n.mem_used,
                os_pid: match n.os_pid {
                    Some(Value::String(s)) => s.parse().ok(),
                    Some(Value::Number(p)) => p.as_u64().and_then(|p| u32::try_from(p).ok()),
                    _ => None,
                },
            })
            .collect())
    }
}

/// A broker node, as the management API reports it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Bytes of memory the node uses.
    pub mem_used: u64,
    /// Its operating-system process id, if reported.
    pub os_pid: Option<u32>,
}

/// Escapes a name for use inside a RabbitMQ regex (permissions, policy
/// patterns).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The vhost named by an AMQP URL's path (`/` when empty).
pub fn vhost_of(amqp_url: &str) -> String {
    let path = url::Url::parse(amqp_url)
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    decode(&path)
}

/// The user named by an AMQP URL (percent-decoded).
pub fn user_of(amqp_url: &str) -> String {
    url::Url::parse(amqp_url)
        .map(|u| decode(u.username()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_and_users_from_urls() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672/bora-test-1"), "bora-test-1");
        assert_eq!(user_of("amqp://bora-srv-x:pw@h/%2f"), "bora-srv-x");
        assert_eq!(seg("/"), "%2F");
    }
}
