//! What clients send, before validation: the bodies of REST requests and
//! the arguments of RPC calls (one shape for both), and their validation
//! into the domain's specs with every field problem reported at once.
//! Their OpenAPI schemas are derived here; the field rules are the domain's.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::AppError;
use crate::domain::secret;
use crate::domain::{
    APPROVAL_GROUP, DEFAULT_RETRY_MAX_DELAY_S, DEFAULT_TIMEOUT_S, Delivery, FieldError,
    MAX_RETRIES, MAX_RETRY_BACKOFF, MAX_RETRY_DELAY_S, MAX_RETRY_EXIT_CODES, MAX_RETRY_MAX_DELAY_S,
    MAX_TIMEOUT_S, OnDependencyFailure, OutputSpec, ServerId, ServerKind, TaskId, TaskSpec,
    check_group, check_input_name, check_labels, check_name, check_output_name, check_text,
    field_err, ranged,
};
use crate::domain::{Labels, MAX_LABEL_LEN, check_label, check_label_count, check_label_key};

/// A registration request (`POST /v1/servers`, RPC `register_server`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    /// The server to register: 1–64 of `[A-Za-z0-9_-]`.
    pub server_id: String,
    /// What consumes its queue; `guest` (a bora worker) by default.
    #[serde(default)]
    pub kind: ServerKind,
    /// Its labels, key → value: at most 32, keys and values 1–63 of
    /// `[A-Za-z0-9_.-]`. They replace the labels of a server registered
    /// already; without them, a registered server keeps its own (a new one
    /// has none).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A registration request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidServer {
    /// The server to register.
    pub server_id: ServerId,
    /// What consumes its queue.
    pub kind: ServerKind,
    /// Its labels, when given (they replace the server's).
    pub labels: Option<Labels>,
}

impl NewServer {
    /// Checks the server id and every label.
    ///
    /// # Errors
    /// `validation_failed` naming every invalid field: `server_id`,
    /// `labels` (too many), `labels.<key>` (a bad key or value).
    pub fn validate(self) -> Result<ValidServer, AppError> {
        let mut errors = Vec::new();
        let server_id = ServerId::parse(&self.server_id).map_err(|e| field_err("server_id", e));
        if let Err(e) = &server_id {
            errors.push(e.clone());
        }
        if let Some(labels) = &self.labels {
            if let Err(e) = check_label_count(labels.len()) {
                errors.push(field_err("labels", e));
            }
            for (k, v) in labels {
                if let Err(e) = check_label(k, v) {
                    errors.push(field_err(label_field(k), e));
                }
            }
        }
        match server_id {
            Ok(server_id) if errors.is_empty() => Ok(ValidServer {
                server_id,
                kind: self.kind,
                labels: self.labels,
            }),
            _ => Err(AppError::validation(errors)),
        }
    }
}

/// A change of a server's labels (`PATCH /v1/servers/{id}`, RPC
/// `label_server`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    /// A JSON merge patch of the server's labels: a key with a string sets
    /// that label, a key with `null` removes it, keys not named stay as
    /// they are. At most 32 labels may remain.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub labels: LabelPatch,
}

/// A JSON merge patch of a label set: key → new value, or `None` to remove.
pub type LabelPatch = BTreeMap<String, Option<String>>;

/// Every invalid key or value of a label patch (a removal's key too).
pub fn label_patch_errors(patch: &LabelPatch) -> Vec<FieldError> {
    patch
        .iter()
        .filter_map(|(k, v)| {
            let checked = match v {
                Some(v) => check_label(k, v),
                None => check_label_key(k),
            };
            checked.err().map(|e| field_err(label_field(k), e))
        })
        .collect()
}

/// Where a label is in a request: `labels.<key>` (a long key cut short).
fn label_field(key: &str) -> String {
    let key: String = key.chars().take(MAX_LABEL_LEN + 1).collect();
    format!("labels.{key}")
}

/// A task as a client submits it (REST body or RPC argument), before validation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// 1–255 characters, unique in the workflow; defaults to the task's id.
    pub name: Option<String>,
    /// The server whose worker runs it: 1–64 of `[A-Za-z0-9_-]`. Required
    /// unless `target` names servers by label; an approval gate has none.
    pub server_id: Option<String>,
    /// Servers by label instead of `server_id`: `{labels, mode, batch}`.
    /// `mode: "all"` (the default) makes a group task with one child per
    /// matching registered server (at most `batch.size` running at once);
    /// `mode: "any"` runs it once, on an online matching server with the
    /// fewest unfinished tasks. The match is taken at release.
    #[schema(value_type = Option<Object>)]
    pub target: Option<crate::domain::Target>,
    /// How the worker runs it: `script` (the default), `Heat::Ungrouped`,
    /// `std.echo`, `std.noop`, or a hook name; `bora.approval` makes it an
    /// approval gate (no server; ended by approve, reject or `timeout_s`).
    pub group: Option<String>,
    /// The script body, or the hook's config; empty by default.
    pub config: Option<String>,
    /// Name → JSON value; scripts get them as environment variables. Never
    /// logged (Heat passes credentials here). A value
    /// `{"get_output": [task, output]}` is a reference to another task's
    /// declared output (or its `deploy_stdout`, `deploy_stderr`,
    /// `deploy_status_code`): it implies a dependency, and the worker gets
    /// the output's value. A value `{"secret": "..."}` is a secret: the
    /// worker gets the string, the store keeps it encrypted, and every view
    /// shows `{"secret": "***"}` (a reference to a secret output is one
    /// too).
    pub inputs: Option<serde_json::Map<String, Value>>,
    /// The outputs the task declares: names, or `{name, error_output,
    /// secret}`; a secret output's value is kept encrypted and shown as
    /// `"***"`, and the tasks that refer to it get it as a secret input.
    pub outputs: Option<Vec<OutputSpec>>,
    /// Passed through to hooks.
    pub options: Option<serde_json::Map<String, Value>>,
    /// Ids or names of tasks of the same workflow (or of the same request)
    /// that must end before this one is released.
    pub depends_on: Option<Vec<String>>,
    /// What a dependency that ends unsuccessfully does to this task; `skip`
    /// by default.
    pub on_dependency_failure: Option<OnDependencyFailure>,
    /// Seconds an attempt may run before the worker kills it: 1–86400,
    /// default 3600.
    pub timeout_s: Option<i64>,
    /// Extra attempts after a failure or timeout: 0–100, default 0.
    pub retries: Option<i64>,
    /// Seconds from a failed attempt to the publish of the next: 0–3600,
    /// default 0.
    pub retry_delay_s: Option<i64>,
    /// Each retry waits this many times longer than the one before:
    /// 1.0–10.0, default 1.0 (a fixed delay). The delay before attempt n+1
    /// is `min(retry_delay_s × retry_backoff^(n−1), retry_max_delay_s)`,
    /// ±10 % jitter.
    pub retry_backoff: Option<f64>,
    /// The longest delay before a retry, in seconds: 0–86400, default 3600.
    pub retry_max_delay_s: Option<i64>,
    /// When given, only a failure with one of these exit codes is retried
    /// (a timeout and a lost worker always are).
    pub retry_exit_codes: Option<Vec<i64>>,
    /// `at_least_once` (the default) or `at_most_once`.
    pub delivery: Option<Delivery>,
}

impl NewTask {
    /// Validates every field, reporting all problems at once. `prefix` locates
    /// the task in the request (e.g. `tasks[3].`).
    ///
    /// # Errors
    /// Every field that is out of range or malformed.
    pub fn validate(self, prefix: &str) -> Result<TaskSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let f = |name: &str| format!("{prefix}{name}");
        let id = TaskId::new();
        let name = match self.name {
            Some(n) => {
                if let Err(e) = check_name(&n) {
                    errors.push(field_err(f("name"), e));
                }
                n
            }
            None => id.to_string(),
        };
        let group = self.group.unwrap_or_else(|| "script".to_owned());
        if let Err(e) = check_group(&group) {
            errors.push(field_err(f("group"), e));
        }
        let gate = group == APPROVAL_GROUP;
        let server_id = match (self.server_id, &self.target, gate) {
            (None, None, true) => None,
            (Some(_), _, true) | (_, Some(_), true) => {
                errors.push(field_err(
                    f("server_id"),
                    format!(
                        "an approval gate ({APPROVAL_GROUP}) runs on no server and has no target"
                    ),
                ));
                None
            }
            (Some(_), Some(_), false) => {
                errors.push(field_err(
                    f("target"),
                    "give either server_id or target, not both",
                ));
                None
            }
            (None, Some(_), false) => None,
            (None, None, false) => {
                errors.push(field_err(
                    f("server_id"),
                    "is required (or a target by label)",
                ));
                None
            }
            (Some(raw), None, false) => match ServerId::parse(&raw) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(field_err(f("server_id"), e));
                    None
                }
            },
        };
        if let Some(t) = &self.target {
            for e in t.check() {
                errors.push(field_err(f("target"), e));
            }
            if let Err(e) = check_labels(&t.labels) {
                errors.push(field_err(f("target.labels"), e));
            }
        }
        let inputs = self.inputs.unwrap_or_default();
        for (k, v) in &inputs {
            if let Err(e) = check_input_name(k) {
                errors.push(field_err(f("inputs"), e));
            }
            if let Err(e) = secret::check_input(k, v) {
                errors.push(field_err(f("inputs"), e));
            }
        }
        let outputs = self.outputs.unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for o in &outputs {
            if let Err(e) = check_output_name(&o.name) {
                errors.push(field_err(f("outputs"), e));
            } else if !seen.insert(o.name.as_str()) {
                errors.push(field_err(
                    f("outputs"),
                    format!("output {:?} is declared twice", o.name),
                ));
            }
        }
        let config = self.config.unwrap_or_default();
        if let Err(e) = check_text(&config) {
            errors.push(field_err(f("config"), e));
        }
        let depends_on = self.depends_on.unwrap_or_default();
        let mut seen_deps = std::collections::HashSet::new();
        for d in &depends_on {
            if !seen_deps.insert(d.as_str()) {
                errors.push(field_err(
                    f("depends_on"),
                    format!("dependency {d:?} is listed twice"),
                ));
            }
        }
        let timeout_s = ranged(
            &f("timeout_s"),
            self.timeout_s,
            DEFAULT_TIMEOUT_S,
            1,
            MAX_TIMEOUT_S,
            &mut errors,
        );
        let retries = ranged(&f("retries"), self.retries, 0, 0, MAX_RETRIES, &mut errors);
        let retry_delay_s = ranged(
            &f("retry_delay_s"),
            self.retry_delay_s,
            0,
            0,
            MAX_RETRY_DELAY_S,
            &mut errors,
        );
        let retry_backoff = match self.retry_backoff {
            None => 1.0,
            Some(b) if (1.0..=MAX_RETRY_BACKOFF).contains(&b) => b,
            Some(_) => {
                errors.push(field_err(
                    f("retry_backoff"),
                    format!("must be between 1.0 and {MAX_RETRY_BACKOFF:.1}"),
                ));
                1.0
            }
        };
        let retry_max_delay_s = ranged(
            &f("retry_max_delay_s"),
            self.retry_max_delay_s,
            DEFAULT_RETRY_MAX_DELAY_S,
            0,
            MAX_RETRY_MAX_DELAY_S,
            &mut errors,
        );
        if self
            .retry_exit_codes
            .as_ref()
            .is_some_and(|c| c.len() > MAX_RETRY_EXIT_CODES)
        {
            errors.push(field_err(
                f("retry_exit_codes"),
                format!("at most {MAX_RETRY_EXIT_CODES} exit codes"),
            ));
        }
        if gate && retries > 0 {
            errors.push(field_err(
                f("retries"),
                "an approval gate is not retried: a person decides",
            ));
        }
        if errors.is_empty() && (gate || server_id.is_some() || self.target.is_some()) {
            Ok(TaskSpec {
                id,
                name,
                server_id,
                target: self.target,
                group,
                config,
                inputs,
                outputs,
                options: self.options.unwrap_or_default(),
                depends_on,
                on_dependency_failure: self.on_dependency_failure.unwrap_or_default(),
                timeout_s,
                retries,
                retry_delay_s,
                retry_backoff,
                retry_max_delay_s,
                retry_exit_codes: self.retry_exit_codes,
                delivery: self.delivery.unwrap_or_default(),
            })
        } else {
            Err(errors)
        }
    }
}

/// A change to a waiting task (`PATCH`): absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    /// A new name, unique in the workflow.
    pub name: Option<String>,
    /// Another server to run on (replaces a target).
    pub server_id: Option<String>,
    /// Another target by label (replaces a server).
    #[schema(value_type = Option<Object>)]
    pub target: Option<crate::domain::Target>,
    /// Another runner: `script`, `Heat::Ungrouped`, `std.echo`, `std.noop`,
    /// or a hook name.
    pub group: Option<String>,
    /// A new script body or hook config.
    pub config: Option<String>,
    /// Replaces every input (never logged). Secrets are sent again in
    /// full: a view's `{"secret": "***"}` sent back is a secret whose
    /// value is `***`.
    pub inputs: Option<serde_json::Map<String, Value>>,
    /// Replaces the declared outputs.
    pub outputs: Option<Vec<OutputSpec>>,
    /// Replaces the hook options.
    pub options: Option<serde_json::Map<String, Value>>,
    /// Replaces the dependencies (ids or names of the workflow's tasks).
    pub depends_on: Option<Vec<String>>,
    /// A new policy for a dependency that ends unsuccessfully.
    pub on_dependency_failure: Option<OnDependencyFailure>,
    /// A new timeout in seconds: 1–86400.
    pub timeout_s: Option<i64>,
    /// A new number of extra attempts: 0–100.
    pub retries: Option<i64>,
    /// A new delay before a retry, in seconds: 0–3600.
    pub retry_delay_s: Option<i64>,
    /// A new growth factor of the retry delay: 1.0–10.0.
    pub retry_backoff: Option<f64>,
    /// A new cap of the retry delay, in seconds: 0–86400.
    pub retry_max_delay_s: Option<i64>,
    /// New exit codes to retry (replaces the list).
    pub retry_exit_codes: Option<Vec<i64>>,
    /// A new delivery guarantee.
    pub delivery: Option<Delivery>,
}

impl TaskPatch {
    /// Applies the patch to `spec` and re-validates the result. Inputs the
    /// patch leaves alone are kept as they are, not validated again: they
    /// hold secrets sealed, which a client may not send.
    ///
    /// # Errors
    /// Every field of the result that is invalid.
    pub fn apply(self, spec: &TaskSpec) -> Result<TaskSpec, Vec<FieldError>> {
        let keep_inputs = self.inputs.is_none();
        let merged = NewTask {
            name: Some(self.name.unwrap_or_else(|| spec.name.clone())),
            server_id: match (&self.server_id, &self.target) {
                (Some(s), _) => Some(s.clone()),
                // A new target replaces the server.
                (None, Some(_)) => None,
                (None, None) => spec.server_id.as_ref().map(|s| s.as_str().to_owned()),
            },
            target: match (&self.server_id, self.target) {
                (_, Some(t)) => Some(t),
                // A new server replaces the target.
                (Some(_), None) => None,
                (None, None) => spec.target.clone(),
            },
            group: Some(self.group.unwrap_or_else(|| spec.group.clone())),
            config: Some(self.config.unwrap_or_else(|| spec.config.clone())),
            inputs: self.inputs,
            outputs: Some(self.outputs.unwrap_or_else(|| spec.outputs.clone())),
            options: Some(self.options.unwrap_or_else(|| spec.options.clone())),
            depends_on: Some(self.depends_on.unwrap_or_else(|| spec.depends_on.clone())),
            on_dependency_failure: Some(
                self.on_dependency_failure
                    .unwrap_or(spec.on_dependency_failure),
            ),
            timeout_s: Some(self.timeout_s.unwrap_or(i64::from(spec.timeout_s))),
            retries: Some(self.retries.unwrap_or(i64::from(spec.retries))),
            retry_delay_s: Some(self.retry_delay_s.unwrap_or(i64::from(spec.retry_delay_s))),
            retry_backoff: Some(self.retry_backoff.unwrap_or(spec.retry_backoff)),
            retry_max_delay_s: Some(
                self.retry_max_delay_s
                    .unwrap_or(i64::from(spec.retry_max_delay_s)),
            ),
            retry_exit_codes: self
                .retry_exit_codes
                .or_else(|| spec.retry_exit_codes.clone()),
            delivery: Some(self.delivery.unwrap_or(spec.delivery)),
        };
        let mut out = merged.validate("")?;
        out.id = spec.id;
        if keep_inputs {
            out.inputs = spec.inputs.clone();
        }
        Ok(out)
    }
}

/// A new workflow with its optional first batch of tasks.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkflow {
    /// 1–255 characters; need not be unique.
    pub name: String,
    /// Free text for people.
    pub description: Option<String>,
    /// The first batch of tasks, created with the workflow; they may refer
    /// to each other by name in any order.
    pub tasks: Option<Vec<NewTask>>,
}

/// The body of an approve or reject (optional as a whole).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateDecision {
    /// Why, for the record (at most 4096 characters); kept in the gate's
    /// result.
    pub comment: Option<String>,
}

/// A change to a workflow's name or description.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPatch {
    /// A new name: 1–255 characters.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
}

/// Validates every task of a batch, reporting all invalid fields at once;
/// `prefix` names the batch in field paths (`tasks` → `tasks[3].name`).
///
/// # Errors
/// Every invalid field of every task.
pub fn validate_tasks(tasks: Vec<NewTask>, prefix: &str) -> Result<Vec<TaskSpec>, Vec<FieldError>> {
    let mut specs = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.validate(&format!("{prefix}[{i}].")) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_task(v: Value) -> NewTask {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let t = new_task(json!({"server_id": "x"})).validate("").unwrap();
        assert_eq!(t.name, t.id.to_string());
        assert_eq!(t.group, "script");
        assert_eq!(t.config, "");
        assert_eq!(t.timeout_s, 3600);
        assert_eq!(t.retries, 0);
        assert_eq!(t.on_dependency_failure, OnDependencyFailure::Skip);
        assert_eq!(t.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn validation_reports_every_field() {
        let errs = new_task(json!({
            "name": "",
            "server_id": "bad id",
            "group": "../x",
            "timeout_s": 0,
            "retries": 101,
            "retry_delay_s": -1,
            "inputs": {"A=B": 1},
            "outputs": ["ok", "a/b", {"name": "ok"}],
            "depends_on": ["a", "a"]
        }))
        .validate("tasks[0].")
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "tasks[0].name",
            "tasks[0].server_id",
            "tasks[0].group",
            "tasks[0].timeout_s",
            "tasks[0].retries",
            "tasks[0].retry_delay_s",
            "tasks[0].inputs",
            "tasks[0].outputs",
            "tasks[0].depends_on",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn outputs_accept_both_forms() {
        let t = new_task(json!({
            "server_id": "x",
            "outputs": ["a", {"name": "b", "error_output": true}, {"name": "c", "secret": true}]
        }))
        .validate("")
        .unwrap();
        assert_eq!(
            t.outputs,
            vec![
                OutputSpec::named("a"),
                OutputSpec {
                    name: "b".into(),
                    error_output: true,
                    secret: false,
                },
                OutputSpec {
                    name: "c".into(),
                    error_output: false,
                    secret: true,
                },
            ]
        );
        // Only a secret one says so.
        assert_eq!(
            serde_json::to_value(&t.outputs).unwrap(),
            json!([{"name": "a", "error_output": false}, {"name": "b", "error_output": true},
                   {"name": "c", "error_output": false, "secret": true}])
        );
        assert!(
            serde_json::from_value::<NewTask>(json!({"server_id": "x", "outputs": [1]})).is_err()
        );
    }

    #[test]
    fn a_secret_input_is_one_string() {
        assert!(
            new_task(json!({"server_id": "x", "inputs": {"PW": {"secret": "pw"}}}))
                .validate("")
                .is_ok()
        );
        for bad in [
            json!({"secret": 1}),
            json!({"secret": "pw", "other": 1}),
            json!({"secret": {"$sealed": "v1:AAAA"}}),
        ] {
            let errs = new_task(json!({"server_id": "x", "inputs": {"PW": bad}}))
                .validate("tasks[0].")
                .unwrap_err();
            assert_eq!(errs[0].field, "tasks[0].inputs");
            assert!(errs[0].message.contains("a secret is"), "{errs:?}");
        }
    }

    #[test]
    fn a_patch_keeps_inputs_it_does_not_give_without_checking_them_again() {
        let mut t = new_task(json!({"server_id": "x"})).validate("").unwrap();
        // As kept: sealed, which a client may not send.
        t.inputs
            .insert("PW".into(), json!({"secret": {"$sealed": "v1:AAAA"}}));
        let p: TaskPatch = serde_json::from_value(json!({"timeout_s": 5})).unwrap();
        assert_eq!(p.apply(&t).unwrap().inputs, t.inputs);
        let p: TaskPatch =
            serde_json::from_value(json!({"inputs": {"PW": {"secret": {"$sealed": "x"}}}}))
                .unwrap();
        assert!(p.apply(&t).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e =
            serde_json::from_value::<NewTask>(json!({"server_id": "x", "timeout": 5})).unwrap_err();
        assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn patch_keeps_id_and_revalidates() {
        let t = new_task(json!({"server_id": "x", "name": "a"}))
            .validate("")
            .unwrap();
        let p: TaskPatch = serde_json::from_value(json!({"timeout_s": 5})).unwrap();
        let t2 = p.apply(&t).unwrap();
        assert_eq!(t2.id, t.id);
        assert_eq!(t2.timeout_s, 5);
        assert_eq!(t2.name, "a");
        let p: TaskPatch = serde_json::from_value(json!({"timeout_s": 0})).unwrap();
        assert!(p.apply(&t).is_err());
    }
}
