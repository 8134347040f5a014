//! The HTTP side of the client: base URL, bearer token, JSON in and out, and
//! [`ClientError`], which keeps the server's error code and message so the
//! CLI can print them as the server said them.

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused: its status and its JSON error body.
    #[error("{status}: {code}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The body's `error.code` (`http_error` when it has none).
        code: String,
        /// The body's `error.message`, else the start of the body or the
        /// status's reason.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach bora at {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// reqwest's reason.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Unexpected {
        /// The URL requested.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// `--url` is unusable (not an `http(s)://` URL): the URL given and why.
    #[error("invalid --url {0:?}: {1}")]
    Url(String, String),
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A REST client of one dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// # Errors
    /// A URL that is not `http(s)://...`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let parsed =
            url::Url::parse(base).map_err(|e| ClientError::Url(base.into(), e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Url(base.into(), "not http(s)".into()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("bora-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Url(base.into(), e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The full URL of `path` (which starts with `/`) on this dispatcher.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the token and `Accept` set.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = &self.token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
        {
            req = req.header(AUTHORIZATION, v);
        }
        req
    }

    /// Sends a request and returns the response if its status is a success.
    ///
    /// # Errors
    /// Transport failures, and refusals as [`ClientError::Api`].
    pub async fn send(&self, req: RequestBuilder, path: &str) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: self.url(path),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |k: &str| body["error"][k].as_str().map(str::to_owned);
        Err(ClientError::Api {
            status,
            code: field("code").unwrap_or_else(|| "http_error".into()),
            message: field("message").unwrap_or_else(|| {
                let t = text.trim();
                if t.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    t.chars().take(500).collect()
                }
            }),
        })
    }

    /// A JSON request; `Value::Null` for an empty answer (204).
    ///
    /// # Errors
    /// See [`Client::send`]; a body that is not JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut req = self
            .request(method, path)
            .header(ACCEPT, "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.send(req, path).await?;
        let text = resp.text().await.map_err(|source| ClientError::Transport {
            url: self.url(path),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Unexpected {
            url: self.url(path),
            message: format!("not JSON: {e}"),
        })
    }

    /// # Errors
    /// See [`Client::json`].
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// # Errors
    /// See [`Client::json`].
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// # Errors
    /// See [`Client::json`].
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.json(Method::DELETE, path, None).await
    }
}

/// Percent-encodes one path segment (task names may hold any character).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("db-1_x.y"), "db-1_x.y");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn only_http_urls() {
        assert!(Client::new("http://127.0.0.1:8080/", None).is_ok());
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("not a url", None).is_err());
    }
}
