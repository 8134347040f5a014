//! Labels on servers (SPEC 7.2): a server's set of `key=value` pairs, set
//! only through the API (never by a worker: a guest is untrusted and must
//! not choose the tasks it receives), and the one rule for what matches.
//! Keys and values are 1–63 characters of `[A-Za-z0-9_.-]`, so they are
//! safe in a URL query, a table cell and a log line; a server carries at
//! most [`MAX_LABELS`] of them.

use std::collections::BTreeMap;

/// A server's labels, key → value, in key order.
pub type Labels = BTreeMap<String, String>;

/// The most labels one server carries.
pub const MAX_LABELS: usize = 32;

/// The longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;

/// How much of an invalid key a message quotes (a key may be anything a
/// client sent, up to the body limit).
const SHOWN_KEY_LEN: usize = MAX_LABEL_LEN + 1;

/// A key as a message names it: quoted, and cut short when it is long.
fn shown_key(key: &str) -> String {
    if key.chars().count() <= SHOWN_KEY_LEN {
        format!("{key:?}")
    } else {
        let head: String = key.chars().take(SHOWN_KEY_LEN).collect();
        format!("{head:?}…")
    }
}

/// Whether `s` is a valid label key or value: 1–63 of `[A-Za-z0-9_.-]`.
fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A label key.
///
/// # Errors
/// The key is empty, longer than 63 or outside `[A-Za-z0-9_.-]`; the
/// message names it.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if valid_part(key) {
        Ok(())
    } else {
        Err(format!(
            "label key {} must be 1 to {MAX_LABEL_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-'",
            shown_key(key)
        ))
    }
}

/// One label: its key, then its value.
///
/// # Errors
/// The key or the value is invalid; the message names the key.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_label_key(key)?;
    if valid_part(value) {
        Ok(())
    } else {
        Err(format!(
            "the value of label {} must be 1 to {MAX_LABEL_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-'",
            shown_key(key)
        ))
    }
}

/// The count rule alone: at most [`MAX_LABELS`] pairs.
///
/// # Errors
/// More than [`MAX_LABELS`] pairs.
pub fn check_label_count(n: usize) -> Result<(), String> {
    if n <= MAX_LABELS {
        Ok(())
    } else {
        Err(format!("at most {MAX_LABELS} labels (got {n})"))
    }
}

/// A whole label set: at most [`MAX_LABELS`] pairs, every key and value
/// valid.
///
/// # Errors
/// Every problem, joined by `; `; each bad label's message names its key.
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    let problems: Vec<String> = check_label_count(labels.len())
        .err()
        .into_iter()
        .chain(labels.iter().filter_map(|(k, v)| check_label(k, v).err()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Parses `key=value` (a CLI argument, a `?label=` query value).
///
/// # Errors
/// No `=`, or an invalid key or value.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("label {} is not key=value", shown_key(s)));
    };
    check_label(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Whether `labels` carries every pair of `wanted` (with the same value).
/// Every label set carries the empty one.
pub fn carries_all(labels: &Labels, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Applies a JSON-merge-patch of a label set: a key with a value sets it,
/// a key with `None` removes it (absent already: nothing to do). The result
/// is not checked; see [`check_labels`].
pub fn merge_labels(labels: &mut Labels, patch: &BTreeMap<String, Option<String>>) {
    for (k, v) in patch {
        match v {
            Some(v) => {
                labels.insert(k.clone(), v.clone());
            }
            None => {
                labels.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_and_values_are_1_to_63_of_the_charset() {
        assert!(check_labels(&labels(&[("role", "web"), ("a.b-c_D9", "x.Y-1_z")])).is_ok());
        assert!(check_labels(&labels(&[(&"k".repeat(63), &"v".repeat(63))])).is_ok());
        let e = check_labels(&labels(&[(&"k".repeat(64), "v")])).unwrap_err();
        assert!(e.contains("label key"), "{e}");
        let e = check_labels(&labels(&[("bad key", "v")])).unwrap_err();
        assert!(e.contains("\"bad key\""), "names the key: {e}");
        let e = check_labels(&labels(&[("zone", "a/b")])).unwrap_err();
        assert!(e.contains("value of label \"zone\""), "names the key: {e}");
        for bad in ["", "é", "a=b", "a b", "a/b", "a:b"] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
            assert!(check_label("k", bad).is_err(), "{bad:?}");
        }
        assert!(check_label("k", &"v".repeat(64)).is_err());
    }

    #[test]
    fn every_bad_label_is_named() {
        let e = check_labels(&labels(&[("ok", "1"), ("bad key", "v"), ("zone", "")])).unwrap_err();
        assert!(e.contains("\"bad key\"") && e.contains("\"zone\""), "{e}");
        assert!(!e.contains("\"ok\""), "{e}");
    }

    #[test]
    fn at_most_32_labels() {
        let many: Labels = (0..MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(check_labels(&many).is_ok());
        let mut more = many;
        more.insert("one-more".into(), "v".into());
        let e = check_labels(&more).unwrap_err();
        assert_eq!(e, "at most 32 labels (got 33)");
    }

    #[test]
    fn long_keys_are_cut_short_in_messages() {
        let e = check_label_key(&"x".repeat(10_000)).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains('…'), "{e}");
    }

    #[test]
    fn parse_label_takes_key_equals_value() {
        assert_eq!(
            parse_label("role=web"),
            Ok(("role".to_owned(), "web".to_owned()))
        );
        let e = parse_label("novalue").unwrap_err();
        assert!(e.contains("\"novalue\" is not key=value"), "{e}");
        assert!(parse_label("role=").is_err());
        assert!(parse_label("=web").is_err());
        assert!(parse_label("a=b=c").is_err(), "a value has no '='");
    }

    #[test]
    fn carries_all_needs_every_wanted_pair() {
        let have = labels(&[("role", "web"), ("zone", "a")]);
        assert!(carries_all(&have, &Labels::new()));
        assert!(carries_all(&have, &labels(&[("role", "web")])));
        assert!(carries_all(
            &have,
            &labels(&[("role", "web"), ("zone", "a")])
        ));
        assert!(!carries_all(&have, &labels(&[("role", "db")])));
        assert!(!carries_all(
            &have,
            &labels(&[("role", "web"), ("rack", "1")])
        ));
        assert!(!carries_all(&Labels::new(), &labels(&[("role", "web")])));
    }

    #[test]
    fn merge_sets_and_removes() {
        let mut have = labels(&[("role", "db"), ("old", "1")]);
        let patch: BTreeMap<String, Option<String>> = [
            ("role".to_owned(), Some("web".to_owned())),
            ("old".to_owned(), None),
            ("never".to_owned(), None),
            ("zone".to_owned(), Some("a".to_owned())),
        ]
        .into_iter()
        .collect();
        merge_labels(&mut have, &patch);
        assert_eq!(have, labels(&[("role", "web"), ("zone", "a")]));
    }
}
