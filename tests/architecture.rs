//! The architecture's rules, checked on the sources (ARCHITECTURE.md,
//! "Rules"): who may import whom, where SQL and AMQP may appear, and that
//! only the task entity assigns a task's state. A rule nobody checks drifts
//! within a few commits; this test fails the build instead, naming the file
//! and the line.

use std::path::{Path, PathBuf};

/// A source file: its path under `src/` and its lines, comments removed.
struct Source {
    path: String,
    lines: Vec<(usize, String)>,
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let path = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let lines = text
                .lines()
                .enumerate()
                .map(|(i, l)| (i + 1, code_of(l)))
                .collect();
            Source { path, lines }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The line without its `//` comment (doc comments name other modules).
fn code_of(line: &str) -> String {
    match line.find("//") {
        Some(i) if !line[..i].contains('"') => line[..i].to_owned(),
        _ => line.to_owned(),
    }
}

/// The top-level module a file belongs to (`store` for `store/tasks.rs`,
/// `rpc` for `rpc.rs`).
fn module_of(path: &str) -> &str {
    let first = path.split('/').next().unwrap_or(path);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Whether `line` assigns a field named `state` (`x.state = ...`, not `==`).
fn assigns_state(line: &str) -> bool {
    line.match_indices(".state").any(|(i, m)| {
        let rest = line[i + m.len()..].trim_start();
        rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=>")
    })
}

/// Every line of the files in `modules` that mentions one of `needles`,
/// except in the files `allowed`.
fn offenders(modules: &[&str], needles: &[&str], allowed: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources() {
        if !modules.contains(&module_of(&s.path)) || allowed.contains(&s.path.as_str()) {
            continue;
        }
        for (n, line) in &s.lines {
            if let Some(needle) = needles.iter().find(|needle| line.contains(*needle)) {
                out.push(format!("src/{}:{n}: {needle} in `{}`", s.path, line.trim()));
            }
        }
    }
    out
}

fn assert_none(rule: &str, found: Vec<String>) {
    assert!(
        found.is_empty(),
        "architecture rule broken: {rule}\n{}",
        found.join("\n")
    );
}

/// Every top-level module of the sources but `keep` (with `lib` and
/// `main`, the crate roots).
fn modules_except(keep: &[&str]) -> Vec<String> {
    let mut modules: Vec<String> = Vec::new();
    for s in sources() {
        let m = module_of(&s.path);
        if !keep.contains(&m) && !modules.iter().any(|x| x == m) {
            modules.push(m.to_owned());
        }
    }
    modules
}

/// Every bora module but `keep`, as `crate::<module>` paths.
fn crate_paths_except(keep: &[&str]) -> Vec<String> {
    let mut keep = keep.to_vec();
    keep.extend(["lib", "main"]);
    modules_except(&keep)
        .into_iter()
        .map(|m| format!("crate::{m}"))
        .collect()
}

#[test]
fn the_state_assignment_matcher() {
    assert!(assigns_state("        self.state = to;"));
    assert!(assigns_state("t.state=TaskState::Queued;"));
    assert!(!assigns_state(".filter(|e| e.state == \"queued\")"));
    assert!(!assigns_state("let s = t.state();"));
}

#[test]
fn the_domain_imports_nothing_of_bora_and_no_io() {
    let mut needles = crate_paths_except(&["domain"]);
    needles.extend(["sqlx", "lapin", "axum", "utoipa", "reqwest", "tokio::"].map(String::from));
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_none(
        "`domain` imports no other module of bora and knows no SQL, AMQP, HTTP or OpenAPI",
        offenders(&["domain"], &needles, &[]),
    );
}

#[test]
fn the_store_imports_only_the_domain() {
    let needles = crate_paths_except(&["domain", "store"]);
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_none(
        "`store` imports only `domain`",
        offenders(&["store"], &needles, &[]),
    );
}

#[test]
fn the_use_cases_know_no_http_and_no_amqp() {
    assert_none(
        "`app` knows no HTTP, no AMQP and none of its callers",
        offenders(
            &["app"],
            &[
                "crate::api",
                "crate::rpc",
                "crate::serve",
                "crate::broker",
                "crate::worker",
                "crate::client",
                "crate::bench",
                "axum",
                "lapin",
            ],
            &[],
        ),
    );
}

#[test]
fn rest_and_rpc_never_import_each_other() {
    assert_none(
        "`api` never imports `rpc`",
        offenders(&["api"], &["crate::rpc"], &[]),
    );
    assert_none(
        "`rpc` never imports `api`",
        offenders(&["rpc"], &["crate::api"], &[]),
    );
}

#[test]
fn the_worker_imports_no_store_use_case_or_api() {
    assert_none(
        "`worker` imports no store, use case, API or dispatcher code",
        offenders(
            &["worker"],
            &[
                "crate::store",
                "crate::app",
                "crate::api",
                "crate::rpc",
                "crate::serve",
                "crate::registration",
            ],
            &[],
        ),
    );
}

#[test]
fn only_the_store_has_sql() {
    let all = modules_except(&["store"]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_none(
        "SQL (`sqlx`) only in `store`",
        offenders(&all, &["sqlx"], &[]),
    );
}

#[test]
fn only_the_broker_modules_know_lapin() {
    let all = modules_except(&["broker", "bench"]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_none(
        "AMQP (`lapin`) only in `broker`, the worker's connection and publisher, and the \
         handler's acks (and `bench`, whose raw baseline is plain lapin on purpose)",
        offenders(
            &all,
            &["lapin"],
            &[
                "worker/broker.rs",
                "worker/publisher.rs",
                "worker/handler.rs",
            ],
        ),
    );
}

#[test]
fn only_the_task_entity_assigns_a_tasks_state() {
    let layers = [
        "domain",
        "app",
        "store",
        "api",
        "rpc",
        "serve",
        "protocol",
        "registration",
    ];
    let mut found = Vec::new();
    for s in sources() {
        if !layers.contains(&module_of(&s.path)) || s.path == "domain/task.rs" {
            continue;
        }
        for (n, line) in &s.lines {
            if assigns_state(line) {
                found.push(format!("src/{}:{n}: `{}`", s.path, line.trim()));
            }
        }
    }
    assert_none("only `domain/task.rs` assigns `state`", found);
    assert_none(
        "only the store restores a task's state (`Task::restored`)",
        offenders(
            &[
                "app",
                "api",
                "rpc",
                "serve",
                "protocol",
                "registration",
                "worker",
            ],
            &["Task::restored"],
            &[],
        ),
    );
}
