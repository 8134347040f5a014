//! References between tasks (SPEC 7.1): an input whose value is
//! `{"get_output": [task, output]}` takes the value of another task's
//! output (or of its result's streams and exit code, as in Heat) when the
//! task is released. These are the rules on values in memory: what a
//! reference is, which outputs can be referred to, and what a producer's
//! result gives.

use serde_json::{Map, Value};

/// The key of a reference object.
pub const GET_OUTPUT: &str = "get_output";

/// Outputs every task has, from its result (Heat's names).
pub const RESULT_OUTPUTS: [&str; 3] = ["deploy_stdout", "deploy_stderr", "deploy_status_code"];

/// One reference: a task of the same workflow (name or id) and one of its
/// outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef {
    /// The producer, as the client named it (name or id).
    pub task: String,
    /// A declared output of the producer, or one of [`RESULT_OUTPUTS`].
    pub output: String,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.task, self.output)
    }
}

/// The references among `inputs`, by input name, in the inputs' order.
///
/// # Errors
/// An input that is an object with a `get_output` key but not exactly
/// `{"get_output": [task, output]}` (two non-empty strings): the message
/// names the input.
pub fn input_refs(inputs: &Map<String, Value>) -> Result<Vec<(String, OutputRef)>, String> {
    let mut out = Vec::new();
    for (name, value) in inputs {
        let Value::Object(obj) = value else {
            continue;
        };
        let Some(target) = obj.get(GET_OUTPUT) else {
            continue;
        };
        let parts = match target {
            Value::Array(parts) if obj.len() == 1 && parts.len() == 2 => parts,
            _ => {
                return Err(format!(
                    "inputs.{name}: a reference is {{\"get_output\": [task, output]}}"
                ));
            }
        };
        match (parts[0].as_str(), parts[1].as_str()) {
            (Some(task), Some(output)) if !task.is_empty() && !output.is_empty() => {
                out.push((
                    name.clone(),
                    OutputRef {
                        task: task.to_owned(),
                        output: output.to_owned(),
                    },
                ));
            }
            _ => {
                return Err(format!(
                    "inputs.{name}: get_output takes two non-empty strings, the task and the output"
                ));
            }
        }
    }
    Ok(out)
}

/// Whether stored inputs (JSON text) may hold a reference: a cheap test
/// that spares the parse for the many tasks that have none.
pub fn may_hold_refs(inputs_json: &str) -> bool {
    inputs_json.contains(GET_OUTPUT)
}

/// Whether `output` can be referred to on a producer that declares
/// `declared` outputs.
pub fn is_referable(output: &str, declared: &[super::OutputSpec]) -> bool {
    RESULT_OUTPUTS.contains(&output) || declared.iter().any(|o| o.name == output)
}

/// What a producer's result gives for `output`: a declared output's
/// value, or (Heat's names) its stdout, stderr or exit code. `None` when
/// the result does not have it (a declared output the task did not write,
/// or wrote as null).
pub fn output_value(
    output: &str,
    outputs: &Map<String, Value>,
    stdout: &str,
    stderr: &str,
    exit_code: i64,
) -> Option<Value> {
    match output {
        "deploy_stdout" => Some(Value::String(stdout.to_owned())),
        "deploy_stderr" => Some(Value::String(stderr.to_owned())),
        "deploy_status_code" => Some(Value::from(exit_code)),
        name => outputs.get(name).filter(|v| !v.is_null()).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn references_are_found_and_checked() {
        let refs = input_refs(&map(json!({
            "PLAIN": "x",
            "OBJ": {"k": 1},
            "DB_URL": {"get_output": ["db", "url"]}
        })))
        .unwrap();
        assert_eq!(
            refs,
            vec![(
                "DB_URL".to_owned(),
                OutputRef {
                    task: "db".into(),
                    output: "url".into()
                }
            )]
        );
        for bad in [
            json!({"A": {"get_output": "db.url"}}),
            json!({"A": {"get_output": ["db"]}}),
            json!({"A": {"get_output": ["db", 3]}}),
            json!({"A": {"get_output": ["", "url"]}}),
            json!({"A": {"get_output": ["db", "url"], "extra": 1}}),
        ] {
            let e = input_refs(&map(bad.clone())).unwrap_err();
            assert!(e.starts_with("inputs.A:"), "{bad}: {e}");
        }
    }

    #[test]
    fn result_outputs_are_heats() {
        let outputs = map(json!({"url": "pg://x", "empty": null}));
        assert_eq!(
            output_value("url", &outputs, "o", "e", 3),
            Some(json!("pg://x"))
        );
        assert_eq!(output_value("empty", &outputs, "o", "e", 3), None);
        assert_eq!(output_value("missing", &outputs, "o", "e", 3), None);
        assert_eq!(
            output_value("deploy_stdout", &outputs, "o", "e", 3),
            Some(json!("o"))
        );
        assert_eq!(
            output_value("deploy_status_code", &outputs, "o", "e", 3),
            Some(json!(3))
        );
        assert!(is_referable("deploy_stderr", &[]));
        assert!(!is_referable("url", &[]));
    }
}
