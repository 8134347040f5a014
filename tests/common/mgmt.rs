//! Shared by every test suite: calls to the RabbitMQ management API that
//! survive a loaded broker.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

pub const MGMT: &str = "http://127.0.0.1:15672";

/// A PUT to the management API. Under a loaded broker (many tests at once)
/// the API may drop a connection or answer 5xx: such failures are retried,
/// anything else fails the test.
pub async fn mgmt_put(path: &str, body: Option<Value>) {
    let http = reqwest::Client::new();
    let mut last = String::new();
    for attempt in 0..10u64 {
        let mut req = http
            .put(format!("{MGMT}/api/{path}"))
            .basic_auth("guest", Some("guest"));
        if let Some(b) = &body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
            Ok(r) => panic!("PUT {path}: HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    panic!("management API unreachable (run .ci/setup): PUT {path}: {last}");
}

/// A GET from the management API, retried like [`mgmt_put`]; the JSON body.
pub async fn mgmt_get(path: &str) -> Value {
    let http = reqwest::Client::new();
    let mut last = String::new();
    for attempt in 0..10u64 {
        let req = http
            .get(format!("{MGMT}/api/{path}"))
            .basic_auth("guest", Some("guest"));
        match req.send().await {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            },
            Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
            Ok(r) => panic!("GET {path}: HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    panic!("management API unreachable (run .ci/setup): GET {path}: {last}");
}
