//! Human output of the client: aligned tables, a workflow's and a task's
//! details, and the answer to "why is this task waiting?". Everything here
//! takes the API's JSON views and returns text; printing is the caller's.

use std::fmt::Write;

use serde_json::Value;

const TERMINAL: [&str; 5] = ["succeeded", "failed", "timed_out", "cancelled", "skipped"];
/// The `blocked_by` entry of a paused workflow (the API's).
const PAUSED: &str = "workflow paused";
/// The group of an approval gate.
const APPROVAL: &str = "bora.approval";

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ok/total` of a workflow's task counts, e.g. `3/5`.
fn progress(counts: &Value) -> String {
    let total: u64 = counts
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    format!("{}/{total}", counts["succeeded"].as_u64().unwrap_or(0))
}

/// Non-zero counts as `state=n` words.
pub fn counts_line(counts: &Value) -> String {
    let words: Vec<String> = counts
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    if words.is_empty() {
        "no tasks".into()
    } else {
        words.join(" ")
    }
}

pub fn workflow_table(workflows: &[Value]) -> String {
    let rows: Vec<Vec<String>> = workflows
        .iter()
        .map(|w| {
            vec![
                s(&w["id"]),
                s(&w["name"]),
                s(&w["state"]),
                progress(&w["task_counts"]),
                s(&w["created_at"]),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATE", "DONE", "CREATED"], &rows)
}

pub fn task_table(tasks: &[Value]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let deps = t["depends_on"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                s(&t["name"]),
                s(&t["server_id"]),
                s(&t["state"]),
                s(&t["attempt"]),
                if deps.is_empty() { "-".into() } else { deps },
                s(&t["id"]),
            ]
        })
        .collect();
    table(
        &["NAME", "SERVER", "STATE", "ATTEMPT", "DEPENDS ON", "ID"],
        &rows,
    )
}

/// One row per attempt: its number, how it ended, exit code, and its
/// error or decision.
pub fn attempts_table(attempts: &[Value]) -> String {
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let r = &a["result"];
            let note = match (&r["decision"], &r["error"]) {
                (Value::Object(d), _) => format!(
                    "{} at {}{}",
                    s(&d["decision"]),
                    s(&d["at"]),
                    d["comment"]
                        .as_str()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ),
                (_, Value::String(e)) => e.clone(),
                _ => "-".into(),
            };
            vec![s(&a["attempt"]), s(&a["state"]), s(&r["exit_code"]), note]
        })
        .collect();
    table(&["ATTEMPT", "ENDED", "EXIT", "ERROR / DECISION"], &rows)
}

pub fn workflow_details(w: &Value, tasks: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Workflow:    {}", s(&w["id"]));
    let _ = writeln!(out, "Name:        {}", s(&w["name"]));
    if let Some(d) = w["description"].as_str() {
        let _ = writeln!(out, "Description: {d}");
    }
    let paused = if w["paused"] == true {
        " (paused: nothing more is published until `bora workflow resume`)"
    } else {
        ""
    };
    let _ = writeln!(out, "State:       {}{paused}", s(&w["state"]));
    let _ = writeln!(out, "Tasks:       {}", counts_line(&w["task_counts"]));
    let _ = writeln!(out, "Created:     {}", s(&w["created_at"]));
    let _ = writeln!(out, "Updated:     {}", s(&w["updated_at"]));
    if !tasks.is_empty() {
        out.push('\n');
        out.push_str(&task_table(tasks));
    }
    out
}

/// Why a waiting or queued task has not run yet, one reason per line.
pub fn why_waiting(t: &Value) -> Vec<String> {
    let state = t["state"].as_str().unwrap_or("");
    let mut why = Vec::new();
    if state == "waiting" {
        let unfinished: Vec<String> = t["dependencies"]
            .as_array()
            .map(|deps| {
                deps.iter()
                    .filter(|d| !TERMINAL.contains(&d["state"].as_str().unwrap_or("")))
                    .map(|d| format!("{} ({})", s(&d["name"]), s(&d["state"])))
                    .collect()
            })
            .unwrap_or_default();
        let blocked: Vec<&str> = t["blocked_by"]
            .as_array()
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let paused = blocked.contains(&PAUSED);
        let retry = blocked.iter().find_map(|b| b.strip_prefix("retry at "));
        if !unfinished.is_empty() {
            why.push(format!(
                "waits for unfinished dependencies: {}",
                unfinished.join(", ")
            ));
        }
        if paused {
            why.push("the workflow is paused: `bora workflow resume` releases it".into());
        }
        if let Some(at) = retry {
            why.push(format!(
                "attempt {} failed; the next attempt is due at {at} (retry delay)",
                s(&t["attempt"])
            ));
        } else if !unfinished.is_empty() || paused {
        } else if t["attempt"].as_i64().unwrap_or(0) > 0 {
            why.push(format!(
                "attempt {} is handed to the broker: waiting for its publish confirm (or a retry delay)",
                s(&t["attempt"])
            ));
        } else {
            why.push("dependencies are satisfied: about to be dispatched".into());
        }
    }
    if t["group"] == APPROVAL {
        if state == "running" {
            why.push(
                "an approval gate: waits for `bora task approve` or `bora task reject`".into(),
            );
        }
        return why;
    }
    if state == "waiting" || state == "queued" {
        let server = s(&t["server_id"]);
        let seen = match t["server_last_seen"].as_str() {
            Some(at) => format!("last heartbeat {at}"),
            None => "no heartbeat ever received".into(),
        };
        if t["server_online"].as_bool().unwrap_or(false) {
            why.push(format!("server {server}: worker online ({seen})"));
        } else {
            why.push(format!("server {server}: worker OFFLINE ({seen})"));
        }
    }
    if state == "queued" {
        match t["messages_ahead"].as_u64() {
            Some(n) => why.push(format!(
                "queue bora_tasks.{}: {n} message(s) ready (an upper bound of those ahead of it)",
                s(&t["server_id"])
            )),
            None => why.push("queue depth unknown (the broker did not answer)".into()),
        }
    }
    why
}

pub fn task_details(t: &Value) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{:<13}{v}", format!("{k}:"));
    };
    field(&mut out, "Task", s(&t["id"]));
    field(&mut out, "Name", s(&t["name"]));
    field(&mut out, "Workflow", s(&t["workflow_id"]));
    field(&mut out, "Server", s(&t["server_id"]));
    if let Some(target) = t["target"].as_object() {
        let labels: Vec<String> = target["labels"]
            .as_object()
            .map(|l| l.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
            .unwrap_or_default();
        let mut how = s(&target["mode"]);
        if let Some(b) = target.get("batch").filter(|b| b.is_object()) {
            how.push_str(&format!(", batch {}", s(&b["size"])));
            if let Some(p) = b["pause_s"].as_u64().filter(|p| *p > 0) {
                how.push_str(&format!(", pause {p} s"));
            }
            if let Some(m) = b["max_failures"].as_u64() {
                how.push_str(&format!(", at most {m} failures"));
            }
        }
        field(&mut out, "Target", format!("{} ({how})", labels.join(",")));
        if let Some(servers) = target.get("servers").and_then(Value::as_array) {
            let names: Vec<String> = servers.iter().map(s).collect();
            field(&mut out, "Matched", names.join(", "));
        }
    }
    if let Some(parent) = t["parent"].as_str() {
        field(&mut out, "Group task", parent.to_owned());
    }
    field(&mut out, "Group", s(&t["group"]));
    field(&mut out, "State", s(&t["state"]));
    field(&mut out, "Attempt", s(&t["attempt"]));
    let deps: Vec<String> = t["dependencies"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| format!("{} ({})", s(&d["name"]), s(&d["state"])))
                .collect()
        })
        .unwrap_or_default();
    field(
        &mut out,
        "Depends on",
        if deps.is_empty() {
            "-".into()
        } else {
            deps.join(", ")
        },
    );
    if let Some(resolved) = t["resolved_inputs"].as_object()
        && !resolved.is_empty()
    {
        out.push_str("Resolved inputs:\n");
        for (name, r) in resolved {
            let from = &r["from"];
            let _ = writeln!(
                out,
                "  {name} = {}  (from {}.{}, attempt {})",
                r["value"],
                s(&from["task"]),
                s(&from["output"]),
                s(&from["attempt"])
            );
        }
    }
    for k in ["created_at", "queued_at", "started_at", "finished_at"] {
        if !t[k].is_null() {
            let label = k.trim_end_matches("_at");
            let mut label = label.to_owned();
            if let Some(c) = label.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            field(&mut out, &label, s(&t[k]));
        }
    }
    if let Some(children) = t["children"].as_array() {
        let _ = writeln!(
            out,
            "Children:    {}",
            super::graph::group_progress(children)
        );
        for c in children {
            let _ = writeln!(
                out,
                "  {}  {} (attempt {})",
                s(&c["name"]),
                s(&c["state"]),
                s(&c["attempt"])
            );
        }
    }
    let why = why_waiting(t);
    if !why.is_empty() {
        out.push_str("Why not running yet:\n");
        for w in why {
            let _ = writeln!(out, "  - {w}");
        }
    }
    if let Some(r) = t["result"].as_object() {
        out.push_str("Result:\n");
        let _ = writeln!(out, "  exit code: {}", s(&r["exit_code"]));
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            let _ = writeln!(out, "  error:     {e}");
        }
        if let Some(o) = r.get("outputs").and_then(Value::as_object)
            && !o.is_empty()
        {
            let _ = writeln!(out, "  outputs:   {}", Value::Object(o.clone()));
        }
        let _ = writeln!(
            out,
            "  stdout:    {} bytes, stderr: {} bytes{} (bora task output shows them)",
            s(&r["stdout_bytes"]),
            s(&r["stderr_bytes"]),
            if r.get("truncated").and_then(Value::as_bool) == Some(true) {
                ", truncated"
            } else {
                ""
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_details_say_where_each_resolved_input_came_from() {
        let t = json!({
            "id": "x", "name": "app", "state": "queued", "attempt": 1,
            "dependencies": [{"name": "db", "state": "succeeded"}],
            "resolved_inputs": {"DB_URL": {"value": "pg://db/app",
                "from": {"task": "db", "task_id": "y", "output": "url", "attempt": 2}}}
        });
        let text = task_details(&t);
        assert!(
            text.contains("Resolved inputs:\n  DB_URL = \"pg://db/app\"  (from db.url, attempt 2)"),
            "{text}"
        );
        let plain = task_details(&json!({"id": "x", "state": "queued"}));
        assert!(!plain.contains("Resolved inputs"), "{plain}");
    }

    #[test]
    fn task_details_show_a_groups_target_and_children() {
        let t = json!({
            "id": "x", "name": "web", "state": "running", "attempt": 1, "server_id": null,
            "target": {"labels": {"role": "web"}, "mode": "all",
                       "batch": {"size": "50%", "pause_s": 5, "max_failures": 0},
                       "servers": ["a", "b"]},
            "children": [
                {"name": "web[a]", "server_id": "a", "state": "succeeded", "attempt": 1},
                {"name": "web[b]", "server_id": "b", "state": "running", "attempt": 2}
            ]
        });
        let text = task_details(&t);
        for line in [
            "Target:      role=web (all, batch 50%, pause 5 s, at most 0 failures)",
            "Matched:     a, b",
            "Children:    1/2 succeeded, 1 running",
            "  web[b]  running (attempt 2)",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let child =
            task_details(&json!({"id": "y", "name": "web[a]", "state": "queued", "parent": "web"}));
        assert!(child.contains("Group task:  web"), "{child}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONG"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(t, "A    LONG\nxxx  y\nz    w\n");
    }

    #[test]
    fn waiting_task_says_what_it_waits_for() {
        let t = json!({
            "state": "waiting", "attempt": 0, "server_id": "web-1",
            "dependencies": [{"name": "db", "state": "running"}, {"name": "net", "state": "succeeded"}],
            "server_online": false, "server_last_seen": null,
        });
        let why = why_waiting(&t);
        assert_eq!(why[0], "waits for unfinished dependencies: db (running)");
        assert!(
            why[1].contains("OFFLINE (no heartbeat ever received)"),
            "{why:?}"
        );
    }

    #[test]
    fn queued_task_reports_the_queue() {
        let t = json!({
            "state": "queued", "attempt": 1, "server_id": "web-1", "dependencies": [],
            "server_online": true, "server_last_seen": "2026-01-01T00:00:00Z", "messages_ahead": 4,
        });
        let why = why_waiting(&t);
        assert!(why[0].contains("worker online (last heartbeat 2026-01-01T00:00:00Z)"));
        assert!(why[1].contains("4 message(s) ready"), "{why:?}");
    }
}
