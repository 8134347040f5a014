//! Fitting a final result under the dispatcher's reply limit
//! (`dispatch.max_result_bytes`, sent in each task as `max_result_bytes`).
//!
//! The limit is on the encoded reply, the exact bytes published: oslo's
//! envelope carries the reply as a JSON string inside JSON, so a control
//! byte of a stream becomes seven (`\\u0000`) and a quote four. When the
//! reply is over the limit, the streams are cut first (down to
//! [`STREAM_FLOOR`] each), then the outputs, then the streams to nothing;
//! the largest first, each cut part keeping its head (a stream also its
//! tail) around a marker, and named in the result's `trimmed`. An output
//! declared secret, and one that is not a string, is never cut in part:
//! it is replaced by the marker whole. The result has been scrubbed of the
//! task's secrets before (a cut only removes text, so it can reveal
//! nothing the scrubbed text did not show). This module knows nothing of
//! AMQP or processes.

use serde_json::Value;

use crate::domain::OutputSpec;
use crate::protocol::{RpcReply, TaskMessage, TaskResult};

/// Encoded bytes of a stream kept before any output is cut.
pub const STREAM_FLOOR: usize = 64 * 1024;

/// How many times the cut is planned again when the reply still does not fit.
const ROUNDS: usize = 6;

/// The final reply carrying `result` for `task`'s attempt, its result cut
/// to fit the task's `max_result_bytes` when it has one. A reply that
/// cannot fit (a limit too small for even the markers) goes as cut as it
/// can be: the dispatcher fails the task with `result_too_large`.
pub fn final_reply(task: &TaskMessage, msg_id: &str, result: TaskResult) -> RpcReply {
    let reply = reply_of(msg_id, &result);
    let Some(limit) = task.max_result_bytes else {
        return reply;
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let size = reply.encode().len();
    if size <= limit {
        return reply;
    }
    let (reply, fitted) = trim(msg_id, &result, &task.outputs, size, limit);
    if fitted <= limit {
        tracing::warn!(
            bytes = size,
            kept = fitted,
            limit,
            "result over the reply limit; cut to fit"
        );
    } else {
        tracing::warn!(
            bytes = size,
            kept = fitted,
            limit,
            "result over the reply limit even when cut; the dispatcher will fail the task"
        );
    }
    reply
}

/// The reply's bytes besides the parts [`surely_fits`] counts: the
/// envelope, the field names, numbers, flags and digests, generously.
const FIXED_BYTES: usize = 4096;

/// Whether the reply of `result` surely fits `task`'s limit, judged
/// without encoding it: every byte of a string (streams, error, msg id,
/// the names in `trimmed`) is at most seven once escaped twice (a control
/// byte: `\\u0000`), and the outputs' own JSON at most twice its length
/// (escaped once more inside oslo's envelope). Most results are far below
/// the limit, and so need neither an encoding to measure nor a trip off
/// the async runtime; `false` only means "measure it".
pub fn surely_fits(task: &TaskMessage, msg_id: &str, result: &TaskResult) -> bool {
    let Some(limit) = task.max_result_bytes else {
        return true;
    };
    if result.servers.is_some() || result.decision.is_some() {
        return false;
    }
    let strings = result.stdout.len()
        + result.stderr.len()
        + result.error.as_ref().map_or(0, String::len)
        + msg_id.len()
        + result.trimmed.iter().map(String::len).sum::<usize>();
    let outputs = if result.outputs.is_empty() {
        0
    } else {
        match serde_json::to_vec(&result.outputs) {
            Ok(v) => v.len(),
            Err(_) => return false,
        }
    };
    let bound = strings
        .saturating_mul(7)
        .saturating_add(outputs.saturating_mul(2))
        .saturating_add(FIXED_BYTES);
    u64::try_from(bound).is_ok_and(|b| b <= limit)
}

/// The reply of `result`, unchanged.
pub fn reply_of(msg_id: &str, result: &TaskResult) -> RpcReply {
    let value = serde_json::to_value(result).unwrap_or_default();
    RpcReply::final_result(msg_id, value)
}

/// Cuts `result` (whose reply is `size` bytes) until its reply fits
/// `limit`, planning again from the whole result with a larger target
/// while it does not, [`ROUNDS`] times at most. Returns the reply and its
/// size.
fn trim(
    msg_id: &str,
    result: &TaskResult,
    declared: &[OutputSpec],
    size: usize,
    limit: usize,
) -> (RpcReply, usize) {
    let mut excess = size.saturating_sub(limit);
    let mut round = 1;
    loop {
        let reply = reply_of(msg_id, &cut_by(result, declared, excess));
        let now = reply.encode().len();
        if now <= limit || round == ROUNDS {
            return (reply, now);
        }
        round += 1;
        // What the plan missed (the `trimmed` list, rounding), and a margin.
        excess += now - limit + 64;
    }
}

/// One part of a result that may be cut.
struct Part {
    /// `stdout`, `stderr` or `outputs.<name>`.
    name: String,
    /// Its encoded bytes in the reply.
    cost: usize,
    /// A stream (head and tail kept), else an output (head kept).
    stream: bool,
    /// Cut whole, never in part (secret, or not a string).
    whole: bool,
}

/// `result` with its parts cut so their encoded bytes shrink by at least
/// `excess` (markers counted): streams to [`STREAM_FLOOR`], then outputs,
/// then streams to nothing.
fn cut_by(result: &TaskResult, declared: &[OutputSpec], excess: usize) -> TaskResult {
    let mut parts = vec![
        Part {
            name: "stdout".to_owned(),
            cost: cost_of(&result.stdout),
            stream: true,
            whole: false,
        },
        Part {
            name: "stderr".to_owned(),
            cost: cost_of(&result.stderr),
            stream: true,
            whole: false,
        },
    ];
    for (name, value) in &result.outputs {
        let secret = declared.iter().any(|o| o.secret && o.name == *name);
        let (cost, string) = match value {
            Value::String(s) => (cost_of(s), true),
            other => (cost_of(&other.to_string()), false),
        };
        parts.push(Part {
            name: format!("outputs.{name}"),
            cost,
            stream: false,
            whole: secret || !string,
        });
    }
    // Each part's budget, from the tiers in order.
    let mut budget: Vec<usize> = parts.iter().map(|p| p.cost).collect();
    let mut left = excess;
    for (streams, floor) in [(true, STREAM_FLOOR), (false, 0), (true, 0)] {
        if left == 0 {
            break;
        }
        let tier: Vec<usize> = (0..parts.len())
            .filter(|i| parts[*i].stream == streams)
            .collect();
        left = lower(&mut budget, &tier, floor, left);
    }
    let mut out = result.clone();
    for (part, budget) in parts.iter().zip(budget) {
        if budget >= part.cost {
            continue;
        }
        out.trimmed.push(part.name.clone());
        if part.stream {
            out.truncated = true;
            let text = if part.name == "stdout" {
                &mut out.stdout
            } else {
                &mut out.stderr
            };
            *text = cut(text, budget, true);
        } else if let Some(name) = part.name.strip_prefix("outputs.")
            && let Some(value) = out.outputs.get_mut(name)
        {
            *value = match &*value {
                Value::String(s) if !part.whole => Value::String(cut(s, budget, false)),
                Value::String(s) => Value::String(marker(s.len())),
                other => Value::String(marker(other.to_string().len())),
            };
        }
    }
    out
}

/// Lowers the budgets of the parts `tier` (one water level, never below
/// `floor`) so they shrink by `excess`, each cut part paying for its
/// marker; the largest parts are cut first and to the same level. Returns
/// what is still to shrink (0 once done).
fn lower(budget: &mut [usize], tier: &[usize], floor: usize, excess: usize) -> usize {
    let gain = |level: usize, budget: &[usize]| -> usize {
        tier.iter()
            .map(|i| budget[*i])
            .filter(|b| *b > level)
            .map(|b| (b - level).saturating_sub(MARKER_COST))
            .sum()
    };
    let top = tier.iter().map(|i| budget[*i]).max().unwrap_or(0);
    if top <= floor {
        return excess;
    }
    let most = gain(floor, &*budget);
    let level = if most < excess {
        floor
    } else {
        // The highest level that gains enough (gain falls as level rises).
        let (mut lo, mut hi) = (floor, top);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if gain(mid, &*budget) >= excess {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    };
    let gained = gain(level, &*budget);
    for i in tier {
        if budget[*i] > level && budget[*i] - level > MARKER_COST {
            budget[*i] = level;
        }
    }
    excess.saturating_sub(gained)
}

/// The marker that stands where `removed` bytes were cut.
fn marker(removed: usize) -> String {
    format!("\n...[{removed} bytes cut by bora to fit dispatch.max_result_bytes]...\n")
}

/// The most a marker costs in the reply (20 digits; two newlines at 3).
const MARKER_COST: usize =
    "\n...[ bytes cut by bora to fit dispatch.max_result_bytes]...\n".len() + 20 + 4;

/// What `text` costs inside the reply: the bytes of its characters once
/// escaped in the inner JSON string and that string escaped again in the
/// envelope (its quotes not counted).
pub fn cost_of(text: &str) -> usize {
    text.chars().map(char_cost).sum()
}

/// One character's bytes in the reply. serde_json escapes `"`, `\` and
/// the control characters only; the envelope escapes the inner JSON's `"`
/// and `\` again.
fn char_cost(c: char) -> usize {
    match c {
        // `\"` → `\\\"`; `\\` → `\\\\`
        '"' | '\\' => 4,
        // `\n` → `\\n`
        '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 3,
        // `\u0000` → `\\u0000`
        c if (c as u32) < 0x20 => 7,
        c => c.len_utf8(),
    }
}

/// `text` cut to at most `budget` bytes of reply (whole characters), a
/// marker in place of what was removed: head and tail around it, or the
/// head and the marker after it.
fn cut(text: &str, budget: usize, tail: bool) -> String {
    let head_budget = if tail { budget / 2 } else { budget };
    let mut spent = 0;
    let mut head_end = 0;
    for (i, c) in text.char_indices() {
        let cost = char_cost(c);
        if spent + cost > head_budget {
            break;
        }
        spent += cost;
        head_end = i + c.len_utf8();
    }
    let mut tail_start = text.len();
    if tail {
        let tail_budget = budget - head_budget;
        let mut spent = 0;
        for (i, c) in text[head_end..].char_indices().rev() {
            let cost = char_cost(c);
            if spent + cost > tail_budget {
                break;
            }
            spent += cost;
            tail_start = head_end + i;
        }
    }
    let removed = tail_start - head_end;
    let mut out = String::with_capacity(head_end + (text.len() - tail_start) + MARKER_COST);
    out.push_str(&text[..head_end]);
    out.push_str(&marker(removed));
    out.push_str(&text[tail_start..]);
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::domain::{Delivery, ServerId, TaskId, WorkflowId};
    use crate::worker::scrub::Scrubber;
    use serde_json::{Map, json};

    fn task(limit: Option<u64>, outputs: &[(&str, bool)]) -> TaskMessage {
        TaskMessage {
            id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            name: "t".into(),
            server_id: ServerId::parse("s").unwrap(),
            group: "script".into(),
            config: String::new(),
            inputs: Map::new(),
            outputs: outputs
                .iter()
                .map(|(name, secret)| OutputSpec {
                    name: (*name).into(),
                    error_output: false,
                    secret: *secret,
                })
                .collect(),
            options: Map::new(),
            timeout_s: 60,
            attempt: 1,
            delivery: Delivery::AtLeastOnce,
            live_output_bytes: None,
            max_result_bytes: limit,
            secrets: Vec::new(),
        }
    }

    #[test]
    fn what_surely_fits_does_fit_and_a_small_result_needs_no_measure() {
        let hostile = "\u{0}\u{1}\"\\\n\u{7f}é\u{2028}x".repeat(500);
        let mut outputs = serde_json::Map::new();
        outputs.insert("a".into(), Value::String(hostile.clone()));
        outputs.insert("b".into(), serde_json::json!({"k": [1, "\"\\", null]}));
        let results = [
            TaskResult::from_streams(1, 0, String::new(), String::new()),
            TaskResult::from_streams(1, 0, hostile.clone(), hostile.clone()),
            TaskResult {
                outputs,
                error: Some(hostile.clone()),
                ..TaskResult::from_streams(1, 3, hostile.clone(), String::new())
            },
        ];
        for limit in [4096u64, 10_000, 60_000, 200_000, 1 << 20] {
            let task = task(Some(limit), &[]);
            for r in &results {
                if surely_fits(&task, "m.1", r) {
                    let size = reply_of("m.1", r).encode().len() as u64;
                    assert!(size <= limit, "judged to fit {limit} but is {size}");
                }
            }
        }
        let task = task(Some(1 << 20), &[]);
        assert!(surely_fits(&task, "m.1", &results[0]));
        assert!(surely_fits(&task, "m.1", &results[1]));
    }

    fn decoded(reply: &RpcReply) -> TaskResult {
        let back = RpcReply::decode(&reply.encode()).unwrap();
        TaskResult::from_reply(1, back.result, None)
    }

    #[test]
    fn the_cost_is_the_encoded_size() {
        for text in [
            "plain",
            "\0\0\u{1}",
            "quote \" and \\ backslash",
            "tab\tnew\nline\r",
            "h\u{e9}llo \u{2028} \u{1f600} \u{7f}",
        ] {
            let empty = RpcReply::final_result("m", json!("")).encode().len();
            let full = RpcReply::final_result("m", json!(text)).encode().len();
            assert_eq!(full - empty, cost_of(text), "{text:?}");
        }
    }

    #[test]
    fn a_result_under_the_limit_or_without_one_is_left_whole() {
        let r = TaskResult::from_streams(1, 0, "\0".repeat(10_000), "err".into());
        let whole = reply_of("m", &r);
        assert!(final_reply(&task(None, &[]), "m", r.clone()).result == whole.result);
        let limit = whole.encode().len() as u64;
        assert!(final_reply(&task(Some(limit), &[]), "m", r).result == whole.result);
    }

    #[test]
    fn control_bytes_are_cut_to_fit_with_markers() {
        let nuls = "\0".repeat(1 << 20);
        let mut r = TaskResult::from_streams(1, 0, nuls.clone(), nuls.clone());
        r.outputs
            .insert("big".into(), Value::String("x".repeat(1 << 20)));
        r.outputs.insert("small".into(), json!("kept"));
        let limit = 8 << 20;
        let reply = final_reply(&task(Some(limit), &[("big", false)]), "m", r);
        let size = reply.encode().len();
        assert!(size <= limit as usize, "{size}");
        assert!(size > (limit as usize) * 9 / 10, "cut far too much: {size}");
        let got = decoded(&reply);
        assert_eq!(got.trimmed, ["stdout", "stderr"]);
        assert!(got.truncated);
        for s in [&got.stdout, &got.stderr] {
            assert!(
                s.starts_with('\0') && s.ends_with('\0'),
                "head and tail kept"
            );
            assert!(s.contains("bytes cut by bora to fit dispatch.max_result_bytes"));
        }
        // The outputs fit once the streams were cut: left whole.
        assert_eq!(got.outputs["big"].as_str().unwrap().len(), 1 << 20);
        assert_eq!(got.outputs["small"], "kept");
        // Counts and digests still describe the whole streams.
        assert_eq!(got.stdout_bytes, 1 << 20);
    }

    #[test]
    fn outputs_are_cut_when_the_streams_are_not_enough() {
        let mut r = TaskResult::from_streams(1, 0, "o".repeat(200_000), "e".repeat(10));
        r.outputs.insert("big".into(), json!("y".repeat(3 << 20)));
        r.outputs
            .insert("secret".into(), json!("s".repeat(2 << 20)));
        r.outputs
            .insert("tree".into(), json!({"k": "z".repeat(1 << 20)}));
        r.outputs.insert("small".into(), json!("kept"));
        let limit = 1 << 20;
        let t = task(
            Some(limit),
            &[("big", false), ("secret", true), ("tree", false)],
        );
        let reply = final_reply(&t, "m", r);
        assert!(reply.encode().len() <= limit as usize);
        let got = decoded(&reply);
        assert!(
            got.trimmed.contains(&"outputs.big".to_owned()),
            "{:?}",
            got.trimmed
        );
        assert!(got.trimmed.contains(&"stdout".to_owned()));
        assert!(!got.trimmed.contains(&"stderr".to_owned()));
        let big = got.outputs["big"].as_str().unwrap();
        assert!(big.starts_with("yyy") && big.ends_with("max_result_bytes]...\n"));
        // A secret and a non-string output are replaced whole, never in part.
        for (name, body) in [("secret", "ss"), ("tree", "zz")] {
            let v = got.outputs[name].as_str().unwrap();
            assert!(
                v.starts_with("\n...[") && !v.contains(body),
                "{name}: {v:.80}"
            );
        }
        assert_eq!(got.outputs["small"], "kept");
        assert_eq!(got.stderr, "eeeeeeeeee");
    }

    #[test]
    fn cutting_a_scrubbed_stream_reveals_no_part_of_a_secret() {
        let secret = "S3CR3T-VALUE-0123456789";
        let mut t = task(None, &[]);
        t.inputs.insert("pw".into(), json!(secret));
        t.secrets.push("pw".into());
        let scrubber = Scrubber::of_task(&t);
        let text = format!("{}{secret}{}", "a".repeat(5000), "b".repeat(5000));
        let r = TaskResult::from_streams(1, 0, text.clone(), text);
        let r = scrubber.scrub_result(r, &t.outputs);
        let whole = reply_of("m", &r).encode().len() as u64;
        for limit in (2_000..whole).step_by(97) {
            t.max_result_bytes = Some(limit);
            let got = decoded(&final_reply(&t, "m", r.clone()));
            for s in [&got.stdout, &got.stderr] {
                assert!(!s.contains("S3CR"), "limit {limit}: {s}");
            }
        }
    }

    #[test]
    fn a_limit_too_small_for_the_markers_sends_the_smallest_cut() {
        let r = TaskResult::from_streams(1, 0, "o".repeat(10_000), "e".repeat(10_000));
        let reply = final_reply(&task(Some(100), &[]), "m", r);
        let got = decoded(&reply);
        assert_eq!(got.trimmed, ["stdout", "stderr"]);
        assert!(got.stdout.len() < 200, "{}", got.stdout);
    }
}
