//! Targeting a group of servers by label (SPEC 7.2): what a task's
//! `target` asks for (the labels a server must carry, `all` or `any`, a
//! rolling batch), what it became at release (the servers matched), and
//! the batch arithmetic. The match itself (which registered servers carry
//! the labels) is the store's; the group's progress is the application's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most children a batch's percentage may stand for, as a bound on
/// `size` in counts too.
pub const MAX_BATCH_SIZE: u32 = 100_000;
/// The longest `pause_s` between a child's end and the next child's start.
pub const MAX_BATCH_PAUSE_S: u32 = 3600;

/// Which of the matching servers run the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    /// Every one: a group task with one child per server (the default).
    #[default]
    All,
    /// One: an online one with the fewest unfinished tasks.
    Any,
}

/// How many children run at once: a count, or a percentage of the
/// matched servers (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// At most this many.
    Count(u32),
    /// At most this share, in percent (1–100).
    Percent(u32),
}

impl BatchSize {
    /// The number of children that may run at once out of `children`
    /// (at least 1).
    pub fn of(self, children: usize) -> usize {
        let n = match self {
            BatchSize::Count(c) => c as usize,
            BatchSize::Percent(p) => (children * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Count(c) => write!(f, "{c}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Count(c) => s.serialize_u32(*c),
            BatchSize::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(format!(
                "a batch size is a count (1 to {MAX_BATCH_SIZE}) or a percentage like \"25%\" (1% to 100%)"
            ))
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Count(c) if (1..=i64::from(MAX_BATCH_SIZE)).contains(&c) => {
                Ok(BatchSize::Count(c as u32))
            }
            Raw::Text(t) => match t.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(BatchSize::Percent(p)),
                _ => Err(bad()),
            },
            Raw::Count(_) => Err(bad()),
        }
    }
}

/// A rolling batch (mode `all` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// At most this many children queued or running at once.
    pub size: BatchSize,
    /// Seconds from a child's end to the next child's start.
    #[serde(default)]
    pub pause_s: u32,
    /// Once more children than this ended unsuccessfully, the children not
    /// started yet end `skipped` and the group fails; none: no limit.
    #[serde(default)]
    pub max_failures: Option<u32>,
}

/// A task's `target`: as the client wrote it, and once released the
/// servers it matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A server matches when it is registered and carries every one.
    pub labels: BTreeMap<String, String>,
    /// `all` (a group task) or `any` (one server).
    #[serde(default)]
    pub mode: TargetMode,
    /// A rolling batch (mode `all` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// The servers matched at release (later label changes do not alter
    /// them); for `any`, the one chosen. Absent before release; not given
    /// by clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
}

impl Target {
    /// What is wrong with a target a client sent (its labels are checked
    /// by the label rule separately).
    ///
    /// # Errors
    /// Every problem, as messages.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.labels.is_empty() {
            errors.push("labels: name at least one label".to_owned());
        }
        if self.servers.is_some() {
            errors.push("servers: set by bora at release, not by clients".to_owned());
        }
        if let Some(b) = &self.batch {
            if self.mode == TargetMode::Any {
                errors.push("batch: only for mode \"all\"".to_owned());
            }
            if b.pause_s > MAX_BATCH_PAUSE_S {
                errors.push(format!(
                    "batch.pause_s: must be at most {MAX_BATCH_PAUSE_S}"
                ));
            }
        }
        errors
    }

    /// How many children may run at once out of `children`.
    pub fn batch_size(&self, children: usize) -> usize {
        self.batch.map_or(children.max(1), |b| b.size.of(children))
    }
}

/// The name of a group's child on `server`: `<group>[<server>]`.
pub fn child_name(group: &str, server: &str) -> String {
    format!("{group}[{server}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_sizes_round_up_and_never_reach_zero() {
        assert_eq!(BatchSize::Percent(25).of(5), 2);
        assert_eq!(BatchSize::Percent(100).of(5), 5);
        assert_eq!(BatchSize::Percent(1).of(1000), 10);
        assert_eq!(BatchSize::Percent(10).of(3), 1);
        assert_eq!(BatchSize::Count(2).of(5), 2);
        assert_eq!(BatchSize::Count(9).of(5), 9);
        assert_eq!(BatchSize::Percent(50).of(0), 1);
    }

    #[test]
    fn batch_sizes_read_counts_and_percentages() {
        let size = |v| serde_json::from_value::<BatchSize>(v);
        assert_eq!(size(json!(2)).unwrap(), BatchSize::Count(2));
        assert_eq!(size(json!("25%")).unwrap(), BatchSize::Percent(25));
        for bad in [
            json!(0),
            json!(-1),
            json!("0%"),
            json!("101%"),
            json!("x"),
            json!(1.5),
        ] {
            assert!(size(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_value(BatchSize::Percent(25)).unwrap(),
            json!("25%")
        );
    }

    #[test]
    fn targets_are_checked() {
        let t: Target = serde_json::from_value(json!({
            "labels": {}, "mode": "any", "batch": {"size": 1, "pause_s": 4000}
        }))
        .unwrap();
        let errors = t.check();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let ok: Target = serde_json::from_value(json!({"labels": {"role": "web"}})).unwrap();
        assert!(ok.check().is_empty());
        assert_eq!(ok.mode, TargetMode::All);
        assert!(serde_json::from_value::<Target>(json!({"labels": {}, "other": 1})).is_err());
    }
}
