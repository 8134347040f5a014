//! The client's verbs: `bora workflow
//! create|list|show|cancel|delete|pause|resume|rerun|watch|graph`, `bora task
//! add|list|show|cancel|rerun|approve|reject|attempts|output` and `bora
//! server register|label|list|show|delete`. Each one is a few REST calls and a rendering: JSON with `--json` (the API's own bodies, for scripts),
//! tables and sentences otherwise.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::http::{Client, segment};
use super::{Outcome, graph, render, watch};
use crate::domain::{check_label_key, parse_label};

/// Where the API is, shared by every client verb.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Base URL of the bora API.
    #[arg(
        long,
        env = "BORA_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token (one of the server's api.tokens).
    #[arg(long, env = "BORA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `bora workflow ...`: where the API is, and the verb.
#[derive(Debug, Args)]
pub struct WorkflowArgs {
    /// The API's URL and token, and the output format.
    #[command(flatten)]
    pub conn: Conn,
    /// The verb to run.
    #[command(subcommand)]
    pub command: WorkflowCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Create a workflow (and its tasks) from a YAML or JSON file shaped like
    /// the body of POST /v1/workflows.
    Create {
        /// The file; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List workflows, oldest first (every page).
    List {
        /// Only workflows in this state (empty, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Stop after this many workflows.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show a workflow and its tasks.
    Show { workflow: String },
    /// Cancel every unfinished task; the workflow takes no new tasks.
    Cancel { workflow: String },
    /// Cancel every unfinished task, then delete the workflow.
    Delete { workflow: String },
    /// Publish nothing more of the workflow until it is resumed (tasks
    /// already queued or running go on).
    Pause { workflow: String },
    /// Resume a paused workflow: publish what became ready.
    Resume { workflow: String },
    /// Run every task that ended unsuccessfully again (the tasks they had
    /// skipped go back to waiting).
    Rerun { workflow: String },
    /// Follow a workflow's progress live until it ends (exit 3 unless it succeeded).
    Watch { workflow: String },
    /// Print the dependency graph as Graphviz DOT (or Mermaid).
    Graph {
        workflow: String,
        /// Mermaid flowchart instead of DOT.
        #[arg(long)]
        mermaid: bool,
    },
}

/// `bora task ...`: where the API is, and the verb.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The API's URL and token, and the output format.
    #[command(flatten)]
    pub conn: Conn,
    /// The verb to run.
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Add a task to a workflow, from a YAML/JSON file (the body of POST
    /// /v1/workflows/{wf}/tasks) or from flags.
    Add {
        workflow: String,
        /// The task as YAML or JSON; `-` reads standard input.
        #[arg(short = 'f', long = "file", conflicts_with_all = ["server_id", "name", "group", "config", "depends_on"])]
        file: Option<PathBuf>,
        /// Target server (required without --file).
        #[arg(long, required_unless_present = "file")]
        server_id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// script (default), std.echo, std.noop, or a hook name.
        #[arg(long)]
        group: Option<String>,
        /// The script body or hook config.
        #[arg(long)]
        config: Option<String>,
        /// A dependency's name or id (repeatable).
        #[arg(long = "depends-on")]
        depends_on: Vec<String>,
    },
    /// List a workflow's tasks.
    List {
        workflow: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        server_id: Option<String>,
    },
    /// Show a task; for a waiting or queued one, why it has not run yet.
    Show { workflow: String, task: String },
    /// Cancel a task.
    Cancel { workflow: String, task: String },
    /// Run a task that ended unsuccessfully again, as a new attempt (the
    /// tasks it had skipped go back to waiting).
    Rerun { workflow: String, task: String },
    /// Approve an approval gate (group bora.approval): it succeeds.
    Approve {
        workflow: String,
        task: String,
        /// Why, kept in the gate's result.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject an approval gate: it fails, and so do the tasks after it.
    Reject {
        workflow: String,
        task: String,
        /// Why, kept in the gate's result.
        #[arg(long)]
        comment: Option<String>,
    },
    /// List every attempt of a task that has a result, oldest first.
    Attempts { workflow: String, task: String },
    /// Print a task's result streams: its stdout to stdout, its stderr to
    /// stderr. With --follow, its live output as it is printed, until the
    /// attempt ends (exit 3 unless the task succeeded).
    Output {
        workflow: String,
        task: String,
        /// Follow the live output of the running attempt.
        #[arg(long)]
        follow: bool,
    },
}

fn client(conn: &Conn) -> anyhow::Result<Client> {
    Ok(Client::new(&conn.url, conn.token.clone())?)
}

/// Reads a YAML or JSON document (JSON is YAML, so one parser takes both).
fn read_document(file: &Path) -> anyhow::Result<Value> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let value: Value = yaml_serde::from_str(&text)
        .with_context(|| format!("{} is neither YAML nor JSON", file.display()))?;
    anyhow::ensure!(
        value.is_object(),
        "{} must hold a mapping (an object)",
        file.display()
    );
    Ok(value)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn wf_path(wf: &str) -> String {
    format!("/v1/workflows/{}", segment(wf))
}

fn task_path(wf: &str, task: &str) -> String {
    format!("{}/tasks/{}", wf_path(wf), segment(task))
}

/// Every task of a workflow matching `query` (`key=value` pairs), page
/// after page.
async fn all_tasks(c: &Client, workflow: &str, query: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        if let Some(m) = &marker {
            q.push(format!("marker={}", segment(m)));
        }
        let mut path = format!("{}/tasks", wf_path(workflow));
        if !q.is_empty() {
            path = format!("{path}?{}", q.join("&"));
        }
        let page = c.get(&path).await?;
        all.extend(array(&page, "tasks"));
        marker = page["next_marker"].as_str().map(str::to_owned);
        if marker.is_none() {
            return Ok(all);
        }
    }
}

fn array(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// Runs a `bora workflow ...` verb.
///
/// # Errors
/// A failed request (with the server's message), an unreadable file.
pub async fn run_workflow(args: WorkflowArgs) -> anyhow::Result<Outcome> {
    let c = client(&args.conn)?;
    let json = args.conn.json;
    match args.command {
        WorkflowCommand::Create { file } => {
            let body = read_document(&file)?;
            let wf = c.post("/v1/workflows", &body).await?;
            if json {
                print_json(&wf)?;
            } else {
                println!("{}", wf["id"].as_str().unwrap_or_default());
                let tasks = array(&wf, "tasks");
                if !tasks.is_empty() {
                    eprint!("{}", render::task_table(&tasks));
                }
            }
        }
        WorkflowCommand::List { state, limit } => {
            let mut all = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let mut q = vec![];
                if let Some(s) = &state {
                    q.push(format!("state={}", segment(s)));
                }
                if let Some(m) = &marker {
                    q.push(format!("marker={}", segment(m)));
                }
                let path = if q.is_empty() {
                    "/v1/workflows".to_owned()
                } else {
                    format!("/v1/workflows?{}", q.join("&"))
                };
                let page = c.get(&path).await?;
                all.extend(array(&page, "workflows"));
                marker = page["next_marker"].as_str().map(str::to_owned);
                let full = limit.is_some_and(|l| all.len() >= l as usize);
                if marker.is_none() || full {
                    break;
                }
            }
            if let Some(l) = limit {
                all.truncate(l as usize);
            }
            if json {
                print_json(&json!({ "workflows": all }))?;
            } else {
                print!("{}", render::workflow_table(&all));
            }
        }
        WorkflowCommand::Show { workflow } => {
            let wf = c.get(&wf_path(&workflow)).await?;
            let tasks = all_tasks(&c, &workflow, &[]).await?;
            if json {
                let mut wf = wf;
                wf["tasks"] = Value::Array(tasks);
                print_json(&wf)?;
            } else {
                print!("{}", render::workflow_details(&wf, &tasks));
            }
        }
        WorkflowCommand::Cancel { workflow } => action(&c, &workflow, "cancel", json).await?,
        WorkflowCommand::Pause { workflow } => action(&c, &workflow, "pause", json).await?,
        WorkflowCommand::Resume { workflow } => action(&c, &workflow, "resume", json).await?,
        WorkflowCommand::Rerun { workflow } => action(&c, &workflow, "rerun", json).await?,
        WorkflowCommand::Delete { workflow } => {
            c.delete(&wf_path(&workflow)).await?;
            if json {
                print_json(&json!({"deleted": workflow}))?;
            } else {
                println!("workflow {workflow} deleted");
            }
        }
        WorkflowCommand::Watch { workflow } => {
            return Ok(watch::watch(&c, &workflow, json).await?);
        }
        WorkflowCommand::Graph { workflow, mermaid } => {
            let wf = c.get(&wf_path(&workflow)).await?;
            let tasks = all_tasks(&c, &workflow, &[]).await?;
            if mermaid {
                print!("{}", graph::mermaid(&tasks));
            } else {
                print!(
                    "{}",
                    graph::dot(wf["name"].as_str().unwrap_or(&workflow), &tasks)
                );
            }
        }
    }
    Ok(Outcome::Success)
}

/// Posts an action on a workflow (`cancel`, `pause`, `resume`, `rerun`) and
/// prints the workflow it answers with.
async fn action(c: &Client, workflow: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let wf = c
        .post(&format!("{}/{verb}", wf_path(workflow)), &json!({}))
        .await?;
    if json {
        print_json(&wf)?;
    } else {
        println!(
            "workflow {} {}{}: {}",
            wf["id"].as_str().unwrap_or_default(),
            wf["state"].as_str().unwrap_or_default(),
            if wf["paused"] == true {
                " (paused)"
            } else {
                ""
            },
            render::counts_line(&wf["task_counts"])
        );
    }
    Ok(())
}

/// Posts an action on a task (`rerun`, `approve`, `reject`) and prints the
/// task it answers with.
async fn task_action(
    c: &Client,
    workflow: &str,
    task: &str,
    verb: &str,
    body: &Value,
    json: bool,
) -> anyhow::Result<()> {
    let t = c
        .post(&format!("{}/{verb}", task_path(workflow, task)), body)
        .await?;
    if json {
        print_json(&t)?;
    } else {
        println!(
            "task {} {} (attempt {})",
            t["name"].as_str().unwrap_or(task),
            t["state"].as_str().unwrap_or_default(),
            t["attempt"]
        );
    }
    Ok(())
}

/// Runs a `bora task ...` verb.
///
/// # Errors
/// A failed request (with the server's message), an unreadable file.
pub async fn run_task(args: TaskArgs) -> anyhow::Result<Outcome> {
    let c = client(&args.conn)?;
    let json = args.conn.json;
    match args.command {
        TaskCommand::Add {
            workflow,
            file,
            server_id,
            name,
            group,
            config,
            depends_on,
        } => {
            let body = match file {
                Some(f) => read_document(&f)?,
                None => {
                    let mut b = serde_json::Map::new();
                    b.insert("server_id".into(), json!(server_id));
                    for (k, v) in [("name", name), ("group", group), ("config", config)] {
                        if let Some(v) = v {
                            b.insert(k.into(), json!(v));
                        }
                    }
                    if !depends_on.is_empty() {
                        b.insert("depends_on".into(), json!(depends_on));
                    }
                    Value::Object(b)
                }
            };
            let t = c
                .post(&format!("{}/tasks", wf_path(&workflow)), &body)
                .await?;
            if json {
                print_json(&t)?;
            } else {
                println!("{}", t["id"].as_str().unwrap_or_default());
                eprint!("{}", render::task_table(std::slice::from_ref(&t)));
            }
        }
        TaskCommand::List {
            workflow,
            state,
            server_id,
        } => {
            let mut q = vec![];
            if let Some(s) = &state {
                q.push(format!("state={}", segment(s)));
            }
            if let Some(s) = &server_id {
                q.push(format!("server_id={}", segment(s)));
            }
            let tasks = all_tasks(&c, &workflow, &q).await?;
            if json {
                print_json(&json!({ "tasks": tasks }))?;
            } else {
                print!("{}", render::task_table(&tasks));
            }
        }
        TaskCommand::Show { workflow, task } => {
            let t = c.get(&task_path(&workflow, &task)).await?;
            if json {
                print_json(&t)?;
            } else {
                print!("{}", render::task_details(&t));
            }
        }
        TaskCommand::Cancel { workflow, task } => {
            c.json(Method::DELETE, &task_path(&workflow, &task), None)
                .await?;
            if json {
                print_json(&json!({"cancelled": task}))?;
            } else {
                println!("task {task} cancelled");
            }
        }
        TaskCommand::Rerun { workflow, task } => {
            task_action(&c, &workflow, &task, "rerun", &json!({}), json).await?;
        }
        TaskCommand::Approve {
            workflow,
            task,
            comment,
        } => {
            let body = json!({ "comment": comment });
            task_action(&c, &workflow, &task, "approve", &body, json).await?;
        }
        TaskCommand::Reject {
            workflow,
            task,
            comment,
        } => {
            let body = json!({ "comment": comment });
            task_action(&c, &workflow, &task, "reject", &body, json).await?;
        }
        TaskCommand::Attempts { workflow, task } => {
            let a = c
                .get(&format!("{}/attempts", task_path(&workflow, &task)))
                .await?;
            if json {
                print_json(&a)?;
            } else {
                print!("{}", render::attempts_table(&array(&a, "attempts")));
            }
        }
        TaskCommand::Output {
            workflow,
            task,
            follow: true,
        } => {
            return Ok(super::follow::follow(&c, &workflow, &task).await?);
        }
        TaskCommand::Output {
            workflow,
            task,
            follow: false,
        } => {
            let t = c.get(&task_path(&workflow, &task)).await?;
            let result = &t["result"];
            anyhow::ensure!(
                result.is_object(),
                "task {task} has no result yet (it is {})",
                t["state"].as_str().unwrap_or("?")
            );
            if json {
                print_json(&json!({
                    "exit_code": result["exit_code"],
                    "stdout": result["stdout"],
                    "stderr": result["stderr"],
                    "truncated": result["truncated"],
                    "error": result["error"],
                }))?;
            } else {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(result["stdout"].as_str().unwrap_or("").as_bytes())?;
                out.flush()?;
                let mut err = std::io::stderr().lock();
                err.write_all(result["stderr"].as_str().unwrap_or("").as_bytes())?;
                if let Some(e) = result["error"].as_str() {
                    writeln!(err, "bora: task error: {e}")?;
                }
            }
        }
    }
    Ok(Outcome::Success)
}

/// `bora server ...`: where the API is, and the verb.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The API's URL and token, and the output format.
    #[command(flatten)]
    pub conn: Conn,
    /// The verb to run.
    #[command(subcommand)]
    pub command: ServerCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a server (or rotate its password): prints its broker
    /// credentials, shown this once.
    Register {
        server_id: String,
        /// guest (a bora worker, least privilege) or oslo (a trusted oslo RPC server).
        #[arg(long, default_value = "guest")]
        kind: String,
        /// A label KEY=VALUE (repeatable). Given, they replace the labels of
        /// a server registered already; else a re-registration keeps them.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Change a registered server's labels: KEY=VALUE sets one, KEY- removes
    /// one; labels not named stay.
    Label {
        server_id: String,
        /// KEY=VALUE to set, KEY- to remove (e.g. `role=web old-`).
        #[arg(required = true, value_name = "KEY=VALUE|KEY-", value_parser = label_change)]
        changes: Vec<(String, Option<String>)>,
    },
    /// List the servers bora knows, with their labels and last heartbeat.
    List {
        /// Only servers carrying this label KEY=VALUE (repeatable: every one).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Show one server.
    Show { server_id: String },
    /// Revoke a server: delete its broker user, cancel its unfinished tasks.
    Delete { server_id: String },
}

fn server_path(id: &str) -> String {
    format!("/v1/servers/{}", segment(id))
}

/// One argument of `bora server label`: `KEY=VALUE` sets, `KEY-` removes.
fn label_change(s: &str) -> Result<(String, Option<String>), String> {
    if !s.contains('=')
        && let Some(key) = s.strip_suffix('-')
    {
        check_label_key(key)?;
        return Ok((key.to_owned(), None));
    }
    parse_label(s)
        .map(|(k, v)| (k, Some(v)))
        .map_err(|e| format!("{e} (KEY=VALUE sets a label, KEY- removes one)"))
}

/// A label set as a table cell: `k=v,k=v`, or `-` for none.
fn labels_cell(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "-".to_owned()
    } else {
        pairs.join(",")
    }
}

fn server_row(s: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    vec![
        text(&s["server_id"]),
        text(&s["kind"]),
        if s["registered"] == true { "yes" } else { "no" }.to_owned(),
        if s["online"] == true {
            "online"
        } else {
            "offline"
        }
        .to_owned(),
        text(&s["last_seen"]),
        labels_cell(&s["labels"]),
    ]
}

const SERVER_HEADER: [&str; 6] = [
    "SERVER",
    "KIND",
    "REGISTERED",
    "STATUS",
    "LAST SEEN",
    "LABELS",
];

/// Runs a `bora server ...` verb.
///
/// # Errors
/// A failed request (with the server's message).
pub async fn run_server(args: ServerArgs) -> anyhow::Result<Outcome> {
    let c = client(&args.conn)?;
    let json = args.conn.json;
    match args.command {
        ServerCommand::Register {
            server_id,
            kind,
            labels,
        } => {
            let mut body = json!({"server_id": server_id, "kind": kind});
            if !labels.is_empty() {
                let labels: serde_json::Map<String, Value> =
                    labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
                body["labels"] = Value::Object(labels);
            }
            let reg = c.post("/v1/servers", &body).await?;
            if json {
                print_json(&reg)?;
            } else {
                let verb = if reg["rotated"] == true {
                    "password rotated for"
                } else {
                    "registered"
                };
                println!("{}", reg["amqp_url"].as_str().unwrap_or_default());
                eprintln!(
                    "{verb} {} ({}, labels {}): broker user {}; the URL above holds its password and is shown only now",
                    reg["server_id"].as_str().unwrap_or_default(),
                    reg["kind"].as_str().unwrap_or_default(),
                    labels_cell(&reg["labels"]),
                    reg["username"].as_str().unwrap_or_default(),
                );
            }
        }
        ServerCommand::Label { server_id, changes } => {
            let patch: serde_json::Map<String, Value> =
                changes.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let s = c
                .json(
                    Method::PATCH,
                    &server_path(&server_id),
                    Some(&json!({ "labels": patch })),
                )
                .await?;
            if json {
                print_json(&s)?;
            } else {
                print!("{}", render::table(&SERVER_HEADER, &[server_row(&s)]));
            }
        }
        ServerCommand::List { labels } => {
            let query: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("label={}", segment(&format!("{k}={v}"))))
                .collect();
            let path = if query.is_empty() {
                "/v1/servers".to_owned()
            } else {
                format!("/v1/servers?{}", query.join("&"))
            };
            let list = c.get(&path).await?;
            if json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> =
                    array(&list, "servers").iter().map(server_row).collect();
                print!("{}", render::table(&SERVER_HEADER, &rows));
            }
        }
        ServerCommand::Show { server_id } => {
            let s = c.get(&server_path(&server_id)).await?;
            if json {
                print_json(&s)?;
            } else {
                print!("{}", render::table(&SERVER_HEADER, &[server_row(&s)]));
            }
        }
        ServerCommand::Delete { server_id } => {
            c.delete(&server_path(&server_id)).await?;
            if !json {
                eprintln!("revoked {server_id}");
            }
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_set_with_equals_and_remove_with_a_trailing_dash() {
        assert_eq!(
            label_change("role=web"),
            Ok(("role".to_owned(), Some("web".to_owned())))
        );
        assert_eq!(label_change("old-"), Ok(("old".to_owned(), None)));
        assert_eq!(label_change("a-b--"), Ok(("a-b-".to_owned(), None)));
        // A value may end with '-': the '=' says it is a set.
        assert_eq!(
            label_change("tier=a-"),
            Ok(("tier".to_owned(), Some("a-".to_owned())))
        );
        for bad in ["novalue", "-", "bad key-", "k=", "k=v w"] {
            assert!(label_change(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_label_cell_lists_pairs_in_key_order_or_a_dash() {
        assert_eq!(
            labels_cell(&json!({"role": "web", "zone": "a"})),
            "role=web,zone=a"
        );
        assert_eq!(labels_cell(&json!({})), "-");
        assert_eq!(labels_cell(&Value::Null), "-");
    }
}
