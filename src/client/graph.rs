//! A workflow's dependency graph as Graphviz DOT or Mermaid: one node per
//! task, labelled with its name and server and coloured by its state, and an
//! edge from each dependency to its dependent. A group task is one node
//! labelled with its children's progress (its children are not drawn).
//! Pure functions of the task views (`depends_on` holds dependency names).

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

/// Fill colours by task state (unknown states are white).
fn colour(state: &str) -> &'static str {
    match state {
        "waiting" => "#e5e7eb",
        "queued" => "#fde68a",
        "running" => "#93c5fd",
        "succeeded" => "#86efac",
        "failed" => "#fca5a5",
        "timed_out" => "#fdba74",
        "cancelled" => "#d1d5db",
        "skipped" => "#f3f4f6",
        _ => "#ffffff",
    }
}

const STATES: [&str; 8] = [
    "waiting",
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
];

struct Node<'a> {
    name: &'a str,
    /// The server, or what stands for it: a group's progress, a gate.
    server: String,
    state: &'a str,
    deps: Vec<&'a str>,
}

/// `3/5 succeeded, 1 running, 1 waiting`: a group's children by state.
pub fn group_progress(children: &[Value]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in children {
        let st = c["state"].as_str().unwrap_or("?");
        match counts.iter_mut().find(|(s, _)| *s == st) {
            Some((_, n)) => *n += 1,
            None => counts.push((st, 1)),
        }
    }
    let done = counts
        .iter()
        .find(|(s, _)| *s == "succeeded")
        .map_or(0, |(_, n)| *n);
    let mut words = vec![format!("{done}/{} succeeded", children.len())];
    let order = [
        "running",
        "queued",
        "waiting",
        "failed",
        "timed_out",
        "cancelled",
        "skipped",
    ];
    for st in &order {
        if let Some((_, n)) = counts.iter().find(|(s, _)| s == st) {
            words.push(format!("{n} {st}"));
        }
    }
    words.join(", ")
}

fn nodes(tasks: &[Value]) -> Vec<Node<'_>> {
    tasks
        .iter()
        .filter(|t| t["parent"].is_null())
        .map(|t| Node {
            name: t["name"].as_str().unwrap_or("?"),
            server: match (&t["server_id"], t["children"].as_array()) {
                (_, Some(children)) => format!("group: {}", group_progress(children)),
                (Value::String(s), _) => s.clone(),
                _ if t["group"] == "bora.approval" => "approval".into(),
                _ => "?".into(),
            },
            state: t["state"].as_str().unwrap_or("?"),
            deps: t["depends_on"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        })
        .collect()
}

fn dot_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT of a workflow (`name`) and its task views.
pub fn dot(name: &str, tasks: &[Value]) -> String {
    let nodes = nodes(tasks);
    let ids: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_quote(name));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(
        s,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];"
    );
    for (i, n) in nodes.iter().enumerate() {
        let label = format!("{}\n{}\n{}", n.name, n.server, n.state);
        let _ = writeln!(
            s,
            "  t{i} [label={}, fillcolor=\"{}\", tooltip={}];",
            dot_quote(&label),
            colour(n.state),
            dot_quote(n.state)
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        for d in &n.deps {
            if let Some(j) = ids.get(d) {
                let _ = writeln!(s, "  t{j} -> t{i};");
            }
        }
    }
    s.push_str("}\n");
    s
}

fn mermaid_text(s: &str) -> String {
    s.replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// A Mermaid flowchart of a workflow's task views.
pub fn mermaid(tasks: &[Value]) -> String {
    let nodes = nodes(tasks);
    let ids: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let mut s = String::from("flowchart LR\n");
    for (i, n) in nodes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  t{i}[\"{}<br/>{}<br/><i>{}</i>\"]",
            mermaid_text(n.name),
            mermaid_text(&n.server),
            n.state
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        for d in &n.deps {
            if let Some(j) = ids.get(d) {
                let _ = writeln!(s, "  t{j} --> t{i}");
            }
        }
    }
    for st in STATES {
        let _ = writeln!(s, "  classDef {st} fill:{},stroke:#374151", colour(st));
    }
    for (i, n) in nodes.iter().enumerate() {
        if STATES.contains(&n.state) {
            let _ = writeln!(s, "  class t{i} {}", n.state);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tasks() -> Vec<Value> {
        vec![
            json!({"name": "db", "server_id": "db-1", "state": "succeeded", "depends_on": []}),
            json!({"name": "app \"x\"", "server_id": "app-1", "state": "running", "depends_on": ["db"]}),
        ]
    }

    #[test]
    fn dot_has_coloured_nodes_and_edges() {
        let d = dot("web", &tasks());
        assert!(d.starts_with("digraph \"web\" {"), "{d}");
        assert!(
            d.contains("t0 [label=\"db\\ndb-1\\nsucceeded\", fillcolor=\"#86efac\""),
            "{d}"
        );
        assert!(d.contains("app \\\"x\\\"\\napp-1"), "{d}");
        assert!(d.contains("t0 -> t1;"), "{d}");
        assert!(d.trim_end().ends_with('}'));
    }

    #[test]
    fn a_group_is_one_node_with_its_progress() {
        let tasks = vec![
            json!({"name": "web", "server_id": null, "state": "running", "depends_on": [],
                   "children": [{"state": "succeeded"}, {"state": "running"}, {"state": "succeeded"}]}),
            json!({"name": "web[a]", "server_id": "a", "state": "succeeded", "depends_on": [], "parent": "web"}),
            json!({"name": "after", "server_id": "b", "state": "waiting", "depends_on": ["web"]}),
        ];
        let d = dot("w", &tasks);
        assert!(
            d.contains("web\\ngroup: 2/3 succeeded, 1 running\\nrunning"),
            "{d}"
        );
        assert!(!d.contains("web[a]"), "{d}");
        assert!(d.contains("t0 -> t1;"), "{d}");
    }

    #[test]
    fn mermaid_has_classes_and_edges() {
        let m = mermaid(&tasks());
        assert!(m.starts_with("flowchart LR\n"));
        assert!(m.contains("t1[\"app #quot;x#quot;<br/>app-1"), "{m}");
        assert!(m.contains("t0 --> t1"), "{m}");
        assert!(m.contains("class t1 running"), "{m}");
    }
}
