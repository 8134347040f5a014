//! Runners: how a task's `group` is run, and how what it did becomes a
//! `TaskResult` (SPEC 4).
//!
//! An executable in `worker.hooks_dir` named after the group (sanitised as
//! heat-config does) always wins; otherwise the built-ins: `script` (alias
//! `Heat::Ungrouped`), `std.echo`, `std.noop`. Any other group is a failed
//! result with a clear `error`. Each process runs in a fresh scratch directory
//! removed afterwards. This module knows nothing of AMQP; it never logs input
//! values or config bodies.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::capture::{Capture, Captured};
use super::live::Live;
use super::process::{self, Ending, Outcome, Spec, Stop, Stoppers};
use super::scrub::Scrubber;
use crate::protocol::{TaskMessage, TaskResult};

/// How much of a hook's stdout (its JSON answer) is read at most.
const HOOK_JSON_MIN_LIMIT: usize = 8 * 1024 * 1024;

/// Where and how runners run; built once from the settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub hooks_dir: PathBuf,
    /// Cap of stdout and of stderr (and of one output file).
    pub max_output_bytes: usize,
    /// Parent of the per-task scratch directories.
    pub scratch_root: PathBuf,
}

/// The runner chosen for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    Hook(PathBuf),
    Script,
    Echo,
    Noop,
    /// No hook and no built-in: the error to report.
    Missing(String),
}

impl Runner {
    /// Chooses the runner of `group`.
    pub fn select(group: &str, hooks_dir: &Path) -> Self {
        let hook = hook_path(group, hooks_dir);
        if let Some(path) = &hook
            && path.is_file()
        {
            return Runner::Hook(path.clone());
        }
        match group {
            "script" | "Heat::Ungrouped" => Runner::Script,
            "std.echo" => Runner::Echo,
            "std.noop" => Runner::Noop,
            _ => Runner::Missing(format!(
                "no runner for group {group:?}: no hook {} and no built-in",
                hook.map_or_else(
                    || format!("in {}", hooks_dir.display()),
                    |p| p.display().to_string()
                )
            )),
        }
    }

    /// The result of a runner that starts no process (`std.*`, missing).
    pub fn instant_result(&self, task: &TaskMessage) -> Option<TaskResult> {
        match self {
            Runner::Echo => {
                let mut r = TaskResult::from_streams(task.attempt, 0, String::new(), String::new());
                r.outputs = task.inputs.clone();
                Some(r)
            }
            Runner::Noop => Some(TaskResult::from_streams(
                task.attempt,
                0,
                String::new(),
                String::new(),
            )),
            Runner::Missing(error) => Some(TaskResult::error(task.attempt, error.clone())),
            Runner::Hook(_) | Runner::Script => None,
        }
    }

    /// Runs a process runner to its end, in a fresh scratch directory,
    /// scrubbing `scrubber`'s secrets from what it captures.
    pub async fn run(
        &self,
        task: &TaskMessage,
        config: &RunnerConfig,
        stoppers: &Stoppers,
        scrubber: &Scrubber,
        live: Option<Arc<Live>>,
    ) -> TaskResult {
        if let Some(r) = self.instant_result(task) {
            return r;
        }
        let scratch = match tempfile::Builder::new()
            .prefix("task-")
            .tempdir_in(&config.scratch_root)
        {
            Ok(dir) => dir,
            Err(e) => {
                return TaskResult::error(
                    task.attempt,
                    format!(
                        "cannot create a scratch directory in {}: {e}",
                        config.scratch_root.display()
                    ),
                );
            }
        };
        let result = match self {
            Runner::Hook(path) => {
                run_hook(path, task, config, scratch.path(), stoppers, scrubber).await
            }
            _ => run_script(task, config, scratch.path(), stoppers, scrubber, live).await,
        };
        // Removal failure (a task that chmod'ed its files) is logged, not fatal.
        if let Err(e) = scratch.close() {
            tracing::warn!(error = %e, "scratch directory not fully removed");
        }
        result.unwrap_or_else(|error| TaskResult::error(task.attempt, error))
    }
}

/// `<hooks_dir>/<group>` with every character but letters, digits, `-` and `_`
/// removed, as heat-config's `find_hook_path` does; `None` if nothing is left.
fn hook_path(group: &str, hooks_dir: &Path) -> Option<PathBuf> {
    let name: String = group
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!name.is_empty()).then(|| hooks_dir.join(name))
}

/// An input as an environment variable value: strings as they are, any other
/// JSON value serialised.
fn env_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn input_env(inputs: &Map<String, Value>) -> Result<Vec<(OsString, OsString)>, String> {
    inputs
        .iter()
        .map(|(name, value)| {
            let value = env_value(value);
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(format!(
                    "input {name:?} cannot be an environment variable name"
                ));
            }
            if value.contains('\0') {
                return Err(format!("input {name:?} holds a NUL byte"));
            }
            Ok((name.into(), value.into()))
        })
        .collect()
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// The built-in `script` runner (heat-config-script's behaviour).
async fn run_script(
    task: &TaskMessage,
    config: &RunnerConfig,
    scratch: &Path,
    stoppers: &Stoppers,
    scrubber: &Scrubber,
    live: Option<Arc<Live>>,
) -> Result<TaskResult, String> {
    let mut env = input_env(&task.inputs)?;
    let outputs_dir = scratch.join("outputs");
    mkdir(&outputs_dir)?;
    let outputs_prefix = outputs_dir.join(task.id.to_string());
    env.push(("heat_outputs_path".into(), outputs_prefix.clone().into()));

    let script = scratch.join(task.id.to_string());
    write_executable(&script, task.config.as_bytes())
        .map_err(|e| format!("cannot write the script to {}: {e}", script.display()))?;
    let (program, args) = if task.config.starts_with("#!") {
        (script.clone(), Vec::new())
    } else {
        (PathBuf::from("/bin/sh"), vec![script.clone().into()])
    };
    let spec = Spec {
        program,
        args,
        env,
        cwd: scratch.to_owned(),
        stdin: None,
        stdout_cap: config.max_output_bytes,
        stderr_cap: config.max_output_bytes,
        stdout_scrub: scrubber.clone(),
        stderr_scrub: scrubber.clone(),
        timeout: Duration::from_secs(u64::from(task.timeout_s)),
        live,
    };
    let outcome = process::run(spec, stoppers)
        .await
        .map_err(|e| format!("cannot start the script: {e}"))?;
    let mut result = process_result(task, &outcome);
    if matches!(outcome.ending, Ending::Exited(_) | Ending::Signalled(_)) {
        // Off the runtime: the files are the task's, and reading them may
        // take a while (they are read whole, through the capped capture).
        let (t, prefix, cap, scrub) = (
            task.clone(),
            outputs_prefix.clone(),
            config.max_output_bytes,
            scrubber.clone(),
        );
        let outputs = tokio::task::spawn_blocking(move || read_outputs(&t, &prefix, cap, &scrub))
            .await
            .map_err(|e| format!("reading the outputs failed: {e}"))?;
        for (name, kept) in outputs {
            result.truncated |= kept.truncated;
            result.outputs.insert(name, Value::String(kept.text));
        }
    }
    Ok(result)
}

fn write_executable(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// Reads each declared output from `<prefix>.<name>`; a missing file leaves the
/// output absent (heat-config-script's rule). Values are strings, capped
/// like the streams, and scrubbed of the task's secrets unless declared
/// secret themselves. Only regular files count: a symlink is not followed
/// (a link to `/dev/zero` would never end) and a FIFO or a device is not
/// read (a FIFO would block); such an output is absent and logged. Blocking:
/// call it off the async runtime.
fn read_outputs(
    task: &TaskMessage,
    prefix: &Path,
    cap: usize,
    scrubber: &Scrubber,
) -> Vec<(String, Captured)> {
    use std::io::Read;
    let mut out = Vec::new();
    for output in &task.outputs {
        let name = &output.name;
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            continue;
        }
        let mut path = prefix.as_os_str().to_owned();
        path.push(format!(".{name}"));
        // O_NOFOLLOW: a symlink fails to open; O_NONBLOCK: opening a FIFO
        // does not wait for a writer (its type is checked next).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(output = %name, error = %e, "output not read: not a regular file, or unreadable");
                continue;
            }
        };
        if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
            tracing::warn!(output = %name, "output not read: not a regular file");
            continue;
        }
        // A secret output carries a secret on purpose: the dispatcher
        // seals it. Any other output is scrubbed.
        let mut capture = if output.secret {
            Capture::new(cap)
        } else {
            Capture::scrubbed(cap, scrubber)
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => capture.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(output = %name, error = %e, "output read failed");
                    break;
                }
            }
        }
        out.push((name.clone(), capture.finish()));
    }
    out
}

/// The result of a process runner from how the process ended and what it printed.
fn process_result(task: &TaskMessage, outcome: &Outcome) -> TaskResult {
    let (code, error, timed_out) = match outcome.ending {
        Ending::Exited(code) => (i64::from(code), None, false),
        Ending::Signalled(sig) => (
            -1,
            Some(format!("terminated by {}", process::signal_name(sig))),
            false,
        ),
        Ending::Stopped(Stop::Timeout) => (
            -1,
            Some(format!("timed out after {} s", task.timeout_s)),
            true,
        ),
        Ending::Stopped(Stop::Cancel) => (-1, Some("cancelled".to_owned()), false),
        Ending::Stopped(Stop::Shutdown) => (-1, Some("worker shutting down".to_owned()), false),
    };
    let mut r = with_streams(task.attempt, code, &outcome.stdout, &outcome.stderr);
    r.error = error;
    r.timed_out = timed_out;
    r
}

fn with_streams(attempt: u32, code: i64, stdout: &Captured, stderr: &Captured) -> TaskResult {
    let mut r = TaskResult::from_streams(attempt, code, String::new(), String::new());
    r.stdout = stdout.text.clone();
    r.stdout_bytes = stdout.bytes;
    r.stdout_sha256 = stdout.sha256.clone();
    r.stderr = stderr.text.clone();
    r.stderr_bytes = stderr.bytes;
    r.stderr_sha256 = stderr.sha256.clone();
    r.truncated = stdout.truncated || stderr.truncated;
    r
}

/// The Heat deployment JSON a hook reads on stdin (what heat-config hands its
/// hooks): scalar inputs as strings of type `String` (as 55-heat-config
/// sanitises them), objects and lists as `Json`.
fn deployment_json(task: &TaskMessage) -> Value {
    let inputs: Vec<Value> = task
        .inputs
        .iter()
        .map(|(name, value)| match value {
            Value::Object(_) | Value::Array(_) => {
                json!({"name": name, "value": value, "type": "Json"})
            }
            other => json!({"name": name, "value": env_value(other), "type": "String"}),
        })
        .collect();
    let outputs: Vec<Value> = task
        .outputs
        .iter()
        .map(|o| json!({"name": o.name, "error_output": o.error_output}))
        .collect();
    json!({
        "id": task.id.to_string(),
        "name": task.name,
        "group": task.group,
        "inputs": inputs,
        "outputs": outputs,
        "options": task.options,
        "config": task.config,
    })
}

/// Runs a hook: deployment JSON on stdin, Heat's signal JSON expected on stdout.
async fn run_hook(
    path: &Path,
    task: &TaskMessage,
    config: &RunnerConfig,
    scratch: &Path,
    stoppers: &Stoppers,
    scrubber: &Scrubber,
) -> Result<TaskResult, String> {
    let mut env = Vec::new();
    // heat-agents' script hook keeps its files here; per task unless the
    // operator chose a place for the worker.
    for (var, sub) in [
        ("HEAT_SCRIPT_WORKING", "working"),
        ("HEAT_SCRIPT_OUTPUTS", "outputs"),
    ] {
        if std::env::var_os(var).is_none() {
            env.push((var.into(), scratch.join(sub).into()));
        }
    }
    let stdin = serde_json::to_vec(&deployment_json(task))
        .map_err(|e| format!("cannot encode the deployment for the hook: {e}"))?;
    let json_limit = config
        .max_output_bytes
        .saturating_mul(4)
        .max(HOOK_JSON_MIN_LIMIT);
    let spec = Spec {
        program: path.to_owned(),
        args: Vec::new(),
        env,
        cwd: scratch.to_owned(),
        stdin: Some(stdin),
        stdout_cap: json_limit,
        stderr_cap: config.max_output_bytes,
        // Its stdout is its JSON answer: scrubbed once parsed (a secret
        // with a quote is escaped there).
        stdout_scrub: Scrubber::default(),
        stderr_scrub: scrubber.clone(),
        timeout: Duration::from_secs(u64::from(task.timeout_s)),
        live: None,
    };
    let outcome = process::run(spec, stoppers)
        .await
        .map_err(|e| format!("cannot start hook {}: {e}", path.display()))?;
    let code = match outcome.ending {
        Ending::Exited(code) => i64::from(code),
        _ => {
            let mut r = process_result(task, &outcome);
            cap_streams(&mut r, config.max_output_bytes);
            return Ok(r);
        }
    };
    let parsed = outcome.stdout.whole().map(serde_json::from_slice::<Value>);
    let mut heat = match parsed {
        Some(Ok(Value::Object(map))) => map,
        other => {
            let why = match other {
                None => format!("printed more than {json_limit} bytes on stdout"),
                Some(Ok(_)) => "printed JSON that is not an object".to_owned(),
                Some(Err(_)) if outcome.stdout.bytes == 0 => "printed nothing".to_owned(),
                Some(Err(_)) => "printed no JSON object".to_owned(),
            };
            let mut r = with_streams(task.attempt, code, &outcome.stdout, &outcome.stderr);
            cap_streams(&mut r, config.max_output_bytes);
            r.error = Some(format!(
                "hook {} {why} (exit code {code}); what it printed is in stdout and stderr",
                path.display()
            ));
            return Ok(r);
        }
    };
    for (name, value) in heat.iter_mut() {
        if !task.outputs.iter().any(|o| o.secret && o.name == *name) {
            scrubber.scrub_value(value);
        }
    }
    Ok(hook_result(
        task.attempt,
        heat,
        code,
        &outcome.stderr,
        config.max_output_bytes,
    ))
}

/// Maps a hook's answer. Its own stderr is used only when the answer has no
/// `deploy_stderr` (heat-agents' hooks log input values there, credentials
/// included); its exit code only when the answer has no `deploy_status_code`.
fn hook_result(
    attempt: u32,
    mut heat: Map<String, Value>,
    code: i64,
    own_stderr: &Captured,
    cap: usize,
) -> TaskResult {
    heat.entry("deploy_status_code")
        .or_insert(Value::from(code));
    let own = !heat.contains_key("deploy_stderr");
    let mut r = TaskResult::from_heat(attempt, heat);
    if own {
        r.stderr = own_stderr.text.clone();
        r.stderr_bytes = own_stderr.bytes;
        r.stderr_sha256 = own_stderr.sha256.clone();
        r.truncated |= own_stderr.truncated;
    }
    cap_streams(&mut r, cap);
    r
}

/// Cuts `stdout` and `stderr` to the cap (head and tail), keeping their counts
/// and digests, which already describe the whole streams.
fn cap_streams(r: &mut TaskResult, cap: usize) {
    for s in [&mut r.stdout, &mut r.stderr] {
        if s.len() > cap {
            let kept = Captured::of(s.as_bytes(), cap);
            *s = kept.text;
            r.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_win_and_names_are_sanitised_like_heat_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Runner::select("script", dir.path()), Runner::Script);
        assert_eq!(
            Runner::select("Heat::Ungrouped", dir.path()),
            Runner::Script
        );
        assert_eq!(Runner::select("std.echo", dir.path()), Runner::Echo);
        std::fs::write(dir.path().join("script"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            Runner::select("script", dir.path()),
            Runner::Hook(dir.path().join("script"))
        );
        let Runner::Missing(e) = Runner::select("../../bin/sh", dir.path()) else {
            panic!("a path must not escape the hooks directory");
        };
        assert!(e.contains("binsh"), "{e}");
        assert!(matches!(
            Runner::select("::", dir.path()),
            Runner::Missing(_)
        ));
    }

    #[test]
    fn inputs_become_strings() {
        let inputs = json!({"s": "x", "n": 3, "b": true, "o": {"k": [1]}});
        let env = input_env(inputs.as_object().unwrap()).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("s"), "x");
        assert_eq!(get("n"), "3");
        assert_eq!(get("b"), "true");
        assert_eq!(get("o"), r#"{"k":[1]}"#);
        assert!(input_env(json!({"a=b": 1}).as_object().unwrap()).is_err());
    }

    #[test]
    fn hook_answer_without_stderr_keeps_the_hooks_own() {
        let own = Captured::of(b"own", 100);
        let heat = json!({"deploy_stdout": "o", "x": "1"});
        let r = hook_result(1, heat.as_object().unwrap().clone(), 4, &own, 100);
        assert_eq!(r.exit_code, 4);
        assert_eq!(r.stderr, "own");
        assert_eq!(r.outputs["x"], "1");
        let heat = json!({"deploy_stderr": "theirs", "deploy_status_code": 0});
        let r = hook_result(1, heat.as_object().unwrap().clone(), 4, &own, 100);
        assert_eq!((r.exit_code, r.stderr.as_str()), (0, "theirs"));
    }
}
