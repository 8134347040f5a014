//! A property of the create endpoints: whatever body a client sends —
//! valid, half valid, or garbage of the right shape — the answer is never a
//! 5xx. Bodies are drawn from a seeded generator that mixes the fields of a
//! task with hostile values (NUL and control characters, very long and
//! non-ASCII strings, huge and negative numbers, ids spelled twice, wrong
//! types, references to nothing). Set `BORA_FUZZ_SEED` to replay a run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::helpers::*;

/// How many bodies each endpoint gets.
const CASES: usize = 300;

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn string(rng: &mut StdRng, names: &[String]) -> Value {
    let s = match rng.random_range(0..10) {
        0 => String::new(),
        1 => "a\u{0}b".to_owned(),
        2 => "\u{1}\u{7f}\n\t".to_owned(),
        3 => "x".repeat(rng.random_range(250..300)),
        4 => "ünïcødé ✓ 𝄞".to_owned(),
        5 => pick(rng, names).clone(),
        6 => pick(rng, names).to_uppercase(),
        7 => "../../etc/passwd".to_owned(),
        8 => "web-1".to_owned(),
        _ => format!("t{}", rng.random_range(0..5)),
    };
    Value::String(s)
}

fn scalar(rng: &mut StdRng, names: &[String]) -> Value {
    match rng.random_range(0..8) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(i64::MAX),
        3 => json!(-1),
        4 => json!(1e300),
        5 => json!(rng.random_range(0..5000)),
        6 => json!([string(rng, names)]),
        _ => string(rng, names),
    }
}

fn task(rng: &mut StdRng, names: &[String]) -> Value {
    let mut t = Map::new();
    let fields = [
        "name",
        "server_id",
        "group",
        "config",
        "inputs",
        "outputs",
        "options",
        "depends_on",
        "on_dependency_failure",
        "timeout_s",
        "retries",
        "retry_delay_s",
        "delivery",
        "bogus",
    ];
    for f in fields {
        if rng.random_bool(0.55) {
            let v = match f {
                "inputs" | "options" => {
                    let mut m = Map::new();
                    for _ in 0..rng.random_range(0..3) {
                        let key = string(rng, names).as_str().unwrap_or("k").to_owned();
                        let v = if rng.random_bool(0.3) {
                            json!({"get_output": [string(rng, names), string(rng, names)]})
                        } else {
                            scalar(rng, names)
                        };
                        m.insert(key, v);
                    }
                    Value::Object(m)
                }
                "outputs" | "depends_on" => (0..rng.random_range(0..3))
                    .map(|_| string(rng, names))
                    .collect(),
                "on_dependency_failure" => json!(pick(rng, &["skip", "run", "maybe"])),
                "delivery" => json!(pick(rng, &["at_least_once", "at_most_once", "twice"])),
                "server_id" if rng.random_bool(0.7) => json!("fuzz-s"),
                _ => scalar(rng, names),
            };
            t.insert(f.to_owned(), v);
        }
    }
    if rng.random_bool(0.1) {
        return scalar(rng, names);
    }
    Value::Object(t)
}

#[tokio::test]
async fn random_bodies_never_get_a_server_error() {
    let seed: u64 = std::env::var("BORA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("BORA_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "fuzz", "tasks": [
            {"name": "t0", "server_id": "fuzz-s", "outputs": ["o"]},
            {"name": "t1", "server_id": "fuzz-s", "depends_on": ["t0"]}
        ]}))
        .await;
    let id = wf.id();
    let mut names = vec!["t0".to_owned(), "t1".to_owned()];
    names.push(app.task(&id, "t0").await.id.to_string());
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..CASES {
        let body = if rng.random_bool(0.5) {
            let tasks: Vec<Value> = (0..rng.random_range(0..4))
                .map(|_| task(&mut rng, &names))
                .collect();
            json!({"name": string(&mut rng, &names), "description": string(&mut rng, &names), "tasks": tasks})
        } else {
            task(&mut rng, &names)
        };
        let (path, body) = if i % 2 == 0 {
            ("/v1/workflows".to_owned(), body)
        } else {
            (format!("/v1/workflows/{id}/tasks"), body)
        };
        let (status, answer) = app.post(&path, body.clone()).await;
        assert!(
            !status.is_server_error(),
            "seed {seed}, case {i}: {status} for POST {path} {body}: {answer}"
        );
        if status.is_client_error() {
            assert!(
                answer["error"]["code"].is_string(),
                "seed {seed}, case {i}: a {status} without a JSON error body: {answer}"
            );
        }
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    println!("statuses: {statuses:?}");
    // Both kinds of answer happened: the generator reaches the valid paths.
    assert!(statuses.keys().any(|s| *s < 300), "{statuses:?}");
    assert!(statuses.keys().any(|s| *s >= 400), "{statuses:?}");
}
