//! Secrets (SPEC 7.4) as values in memory: what a secret input is, how a
//! sealed value looks where bora keeps it, and how views mask it.
//!
//! A client writes a secret input as `{"secret": "value"}` (a string). From
//! the moment a use case takes it, bora holds it only sealed: the input is
//! kept as `{"secret": {"$sealed": TOKEN}}`, a secret output of a result as
//! `{"$sealed": TOKEN}` (a group's as server → `{"$sealed": TOKEN}`), and a
//! reference that resolved to a secret output as its `resolved_inputs`
//! entry `{"value": <sealed>, "secret": true, "from": ...}`. The token is
//! the AEAD's (sealing and opening are the caller's: this module only
//! finds, builds and masks the shapes). Views replace every sealed value
//! by [`MASK`]; only the relay opens them, to give a worker its plain
//! values.
//!
//! What is opened is decided by metadata bora alone writes, never by a
//! value's shape: a top-level `{"secret": <sealed>}` input (a client's
//! secret must be a string, so a client cannot submit one) and a resolved
//! entry flagged `secret`. A sealed-looking value a client or a worker
//! sends anywhere else stays as it is (and is masked), so nobody can have
//! bora open a token they copied from elsewhere.

use serde_json::{Map, Value};

/// What every view shows in place of a secret value.
pub const MASK: &str = "***";

/// The key of a secret input: `{"secret": "value"}`.
pub const SECRET: &str = "secret";

/// The key of a sealed value: `{"$sealed": TOKEN}`.
pub const SEALED: &str = "$sealed";

/// The secret a client wrote, if `value` is `{"secret": "..."}`.
pub fn client_secret(value: &Value) -> Option<&str> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get(SECRET).and_then(Value::as_str),
        _ => None,
    }
}

/// Checks an input value a client sent: an object with a `secret` key must
/// be exactly `{"secret": "value"}`, a string.
///
/// # Errors
/// The message, naming the input.
pub fn check_input(name: &str, value: &Value) -> Result<(), String> {
    let shaped = value.as_object().is_some_and(|o| o.contains_key(SECRET));
    if shaped && client_secret(value).is_none() {
        return Err(format!(
            "inputs.{name}: a secret is {{\"secret\": \"value\"}}: one key, and its value a string"
        ));
    }
    Ok(())
}

/// Whether any input is a client's secret (to seal).
pub fn has_client_secrets(inputs: &Map<String, Value>) -> bool {
    inputs.values().any(|v| client_secret(v).is_some())
}

/// A sealed value: `{"$sealed": token}`.
pub fn sealed(token: String) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(SEALED.to_owned(), Value::String(token));
    Value::Object(m)
}

/// The token of a sealed value.
pub fn sealed_token(value: &Value) -> Option<&str> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get(SEALED).and_then(Value::as_str),
        _ => None,
    }
}

/// A secret input as bora keeps it: `{"secret": {"$sealed": token}}`.
pub fn sealed_input(token: String) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(SECRET.to_owned(), sealed(token));
    Value::Object(m)
}

/// The sealed value of a kept secret input (`{"secret": <sealed>}`).
pub fn kept_secret(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get(SECRET).filter(|v| sealed_token(v).is_some()),
        _ => None,
    }
}

/// Whether JSON text may hold a sealed value: a cheap test that spares the
/// walk for the many values that hold none.
pub fn may_hold_sealed(text: &str) -> bool {
    text.contains(SEALED)
}

/// Replaces every sealed value within `value` by [`MASK`]; returns whether
/// it found one.
pub fn mask(value: &mut Value) -> bool {
    if sealed_token(value).is_some() {
        *value = Value::String(MASK.to_owned());
        return true;
    }
    match value {
        Value::Object(o) => o.values_mut().fold(false, |found, v| mask(v) | found),
        Value::Array(a) => a.iter_mut().fold(false, |found, v| mask(v) | found),
        _ => false,
    }
}

/// [`mask`] on every value of a map.
pub fn mask_all(map: &mut Map<String, Value>) -> bool {
    map.values_mut().fold(false, |found, v| mask(v) | found)
}

/// Opens the value of a secret input: a sealed value, or (a group's
/// output) an object whose members are sealed values. Anything else is
/// kept as it is. `open` turns a token into the plain value.
///
/// # Errors
/// The first error of `open`.
pub fn open_value<E>(
    value: Value,
    open: &mut impl FnMut(&str) -> Result<Value, E>,
) -> Result<Value, E> {
    if let Some(token) = sealed_token(&value) {
        return open(token);
    }
    match value {
        Value::Object(members) => members
            .into_iter()
            .map(|(k, v)| match sealed_token(&v) {
                Some(token) => open(token).map(|plain| (k, plain)),
                None => Ok((k, v)),
            })
            .collect::<Result<Map<_, _>, E>>()
            .map(Value::Object),
        other => Ok(other),
    }
}

/// Every text a worker must scrub for one secret value: the value as its
/// environment variable holds it (a string as is, anything else as JSON),
/// and each string within it.
pub fn texts(value: &Value) -> Vec<String> {
    fn leaves(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Object(o) => o.values().for_each(|v| leaves(v, out)),
            Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Null => {}
        other => {
            out.push(other.to_string());
            leaves(other, &mut out);
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_clients_secret_is_one_string() {
        assert_eq!(client_secret(&json!({"secret": "pw"})), Some("pw"));
        assert_eq!(client_secret(&json!({"secret": 3})), None);
        assert_eq!(client_secret(&json!({"secret": "pw", "x": 1})), None);
        assert_eq!(client_secret(&json!("pw")), None);
        assert!(check_input("A", &json!({"secret": "pw"})).is_ok());
        assert!(check_input("A", &json!({"other": 1})).is_ok());
        for bad in [
            json!({"secret": 3}),
            json!({"secret": {"$sealed": "x"}}),
            json!({"secret": "pw", "x": 1}),
        ] {
            let e = check_input("A", &bad).unwrap_err();
            assert!(e.starts_with("inputs.A:"), "{e}");
        }
    }

    #[test]
    fn sealed_values_are_masked_wherever_they_are() {
        let mut v = json!({
            "a": sealed_input("t1".into()),
            "b": {"web-1": sealed("t2".into()), "web-2": "plain"},
            "c": [sealed("t3".into())],
            "d": "plain",
        });
        assert!(mask(&mut v));
        assert_eq!(
            v,
            json!({"a": {"secret": "***"}, "b": {"web-1": "***", "web-2": "plain"},
                   "c": ["***"], "d": "plain"})
        );
        assert!(!mask(&mut json!({"x": 1})));
    }

    #[test]
    fn opening_takes_a_sealed_value_or_a_groups_object_of_them() {
        let mut open = |t: &str| Ok::<_, ()>(Value::String(format!("plain-{t}")));
        assert_eq!(
            open_value(sealed("a".into()), &mut open),
            Ok(json!("plain-a"))
        );
        assert_eq!(
            open_value(json!({"w1": sealed("a".into()), "w2": null}), &mut open),
            Ok(json!({"w1": "plain-a", "w2": null}))
        );
        // Nothing deeper is opened.
        let deep = json!({"w1": {"x": sealed("a".into())}});
        assert_eq!(open_value(deep.clone(), &mut open), Ok(deep));
        assert_eq!(
            kept_secret(&sealed_input("t".into())),
            Some(&sealed("t".into()))
        );
        assert_eq!(kept_secret(&json!({"secret": "plain"})), None);
    }

    #[test]
    fn texts_to_scrub() {
        assert_eq!(texts(&json!("pw")), vec!["pw"]);
        assert_eq!(texts(&json!("")), Vec::<String>::new());
        assert_eq!(
            texts(&json!({"w1": "a", "w2": "b"})),
            vec![r#"{"w1":"a","w2":"b"}"#, "a", "b"]
        );
        assert_eq!(texts(&json!(12345)), vec!["12345"]);
    }
}
