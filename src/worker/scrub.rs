//! Scrubbing secrets from what a task reports (SPEC 7.4): every secret
//! value the worker was given (the inputs its message names in `secrets`,
//! after resolution) is replaced by `***` in captured stdout, stderr and
//! outputs before anything is reported.
//!
//! Every byte of every occurrence of any secret is hidden, occurrences
//! that overlap or touch included (secrets `abc` and `bcd` in `abcd`, or
//! `aa` in `aaa`): each run of such bytes becomes one `***`, so no part of
//! a secret shows beside the mask. Empty secrets are ignored. A
//! [`ScrubStream`] does the same to a stream fed in chunks, holding back
//! at most the longest secret's length less one byte, so a secret split
//! across two reads is still found and counts and digests describe what
//! is shown. This module knows nothing of processes or AMQP.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

use crate::domain::OutputSpec;
use crate::domain::secret::{MASK, texts};
use crate::protocol::{TaskMessage, TaskResult, sha256_hex};

/// The secrets of one task, ready to be found in its output; cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Every secret (non-empty, distinct); `None` when there is none.
    matcher: Option<AhoCorasick>,
    /// The longest secret's length in bytes.
    longest: usize,
    /// The secrets could not be made into a matcher (far too large): then
    /// every byte is masked, never none.
    mask_everything: bool,
}

impl Scrubber {
    /// A scrubber of `secrets` (empty ones are ignored).
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut patterns: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        patterns.sort_unstable();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        // Standard semantics: the only kind that reports overlapping
        // matches, which the coverage of every byte needs.
        let built = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
        });
        match built {
            None => Self::default(),
            Some(Ok(matcher)) => Self {
                matcher: Some(matcher),
                longest,
                mask_everything: false,
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "secrets too large to search for: every output is masked whole");
                Self {
                    matcher: None,
                    longest,
                    mask_everything: true,
                }
            }
        }
    }

    /// The scrubber of a task: the values of the inputs its message names
    /// as secrets (a string as is; any other JSON as its text, and each
    /// string within it).
    pub fn of_task(task: &TaskMessage) -> Self {
        if task.secrets.is_empty() {
            return Self::default();
        }
        Self::new(
            task.secrets
                .iter()
                .filter_map(|name| task.inputs.get(name))
                .flat_map(texts),
        )
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none() && !self.mask_everything
    }

    /// `text` with every secret replaced by `***` (borrowed when it holds
    /// none).
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Secrets are whole UTF-8 strings, so every run replaced starts
            // and ends on a character boundary of valid UTF-8.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// [`Scrubber::scrub`] on bytes.
    pub fn scrub_bytes<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let runs = self.runs(data, 0);
        if runs.is_empty() {
            return Cow::Borrowed(data);
        }
        let mut out = Vec::with_capacity(data.len());
        let mut pos = 0;
        for (start, end) in runs {
            out.extend_from_slice(&data[pos..start]);
            out.extend_from_slice(MASK.as_bytes());
            pos = end;
        }
        out.extend_from_slice(&data[pos..]);
        Cow::Owned(out)
    }

    /// The maximal runs of bytes of `data` that some occurrence of a secret
    /// covers, in order, with `[0, covered)` covered already.
    fn runs(&self, data: &[u8], covered: usize) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if covered > 0 {
            spans.push((0, covered.min(data.len())));
        }
        if let Some(m) = &self.matcher {
            spans.extend(m.find_overlapping_iter(data).map(|m| (m.start(), m.end())));
        } else if self.mask_everything && !data.is_empty() {
            spans.push((0, data.len()));
        }
        spans.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match runs.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        runs
    }

    /// A stream scrubbed as it is fed.
    pub fn stream(&self) -> ScrubStream {
        ScrubStream {
            scrubber: self.clone(),
            pending: Vec::new(),
            covered: 0,
            masked_tail: false,
        }
    }

    /// Scrubs what a result reports: stdout, stderr, `error`, and every
    /// string within an output that `declared` does not mark secret (a
    /// secret output carries a secret on purpose, sealed by the
    /// dispatcher). A stream that was whole gets its count and digest from
    /// the scrubbed text.
    pub fn scrub_result(&self, mut result: TaskResult, declared: &[OutputSpec]) -> TaskResult {
        if self.is_empty() {
            return result;
        }
        for (text, bytes, sha) in [
            (
                &mut result.stdout,
                &mut result.stdout_bytes,
                &mut result.stdout_sha256,
            ),
            (
                &mut result.stderr,
                &mut result.stderr_bytes,
                &mut result.stderr_sha256,
            ),
        ] {
            let whole = *bytes == text.len() as u64;
            if let Cow::Owned(clean) = self.scrub(text) {
                *text = clean;
                if whole {
                    *bytes = text.len() as u64;
                    *sha = sha256_hex(text.as_bytes());
                }
            }
        }
        if let Some(error) = &mut result.error
            && let Cow::Owned(clean) = self.scrub(error)
        {
            *error = clean;
        }
        for (name, value) in result.outputs.iter_mut() {
            if !declared.iter().any(|o| o.secret && o.name == *name) {
                self.scrub_value(value);
            }
        }
        result
    }

    /// Scrubs every string within a JSON value.
    pub fn scrub_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(clean) = self.scrub(s) {
                    *s = clean;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| self.scrub_value(v)),
            Value::Object(o) => o.values_mut().for_each(|v| self.scrub_value(v)),
            _ => {}
        }
    }
}

/// One stream being scrubbed: what is fed comes out scrubbed, less what
/// may still be the start of a secret (held until the next chunk or the
/// end).
pub struct ScrubStream {
    /// A clone (the matcher inside is shared).
    scrubber: Scrubber,
    /// Bytes held back: fewer than the longest secret.
    pending: Vec<u8>,
    /// How many leading bytes of `pending` an occurrence found earlier
    /// covers (it started before them).
    covered: usize,
    /// Whether what came out last was a mask whose run may go on into
    /// `pending` (a run is masked once however it is cut).
    masked_tail: bool,
}

impl ScrubStream {
    /// Takes the next bytes of the stream; appends what is ready to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.scrubber.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        // An occurrence that starts before `safe` ends within `buf`, so
        // every byte before `safe` is known to be covered or not.
        let safe = buf.len().saturating_sub(self.scrubber.longest - 1);
        self.emit(buf, safe, out);
    }

    /// The end of the stream: appends what was held back, scrubbed.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.pending);
        let end = buf.len();
        self.emit(buf, end, out);
    }

    /// Writes `buf[..safe]` scrubbed and keeps the rest for later.
    fn emit(&mut self, buf: Vec<u8>, safe: usize, out: &mut Vec<u8>) {
        let mut pos = 0;
        let mut carried = 0;
        for (start, end) in self.scrubber.runs(&buf, self.covered) {
            if start >= safe {
                break;
            }
            if start > pos {
                out.extend_from_slice(&buf[pos..start]);
                self.masked_tail = false;
            }
            if !(start == 0 && self.masked_tail) {
                out.extend_from_slice(MASK.as_bytes());
            }
            self.masked_tail = true;
            pos = end.min(safe);
            carried = end.saturating_sub(safe);
        }
        if pos < safe {
            out.extend_from_slice(&buf[pos..safe]);
            self.masked_tail = false;
        }
        self.pending = buf[safe..].to_vec();
        self.covered = carried;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrub(secrets: &[&str], text: &str) -> String {
        Scrubber::new(secrets).scrub(text).into_owned()
    }

    #[test]
    fn every_occurrence_is_masked() {
        assert_eq!(scrub(&["pw"], "a pw and pw"), "a *** and ***");
        assert_eq!(scrub(&["pw"], "nothing here"), "nothing here");
        assert!(matches!(
            Scrubber::new(["pw"]).scrub("nothing"),
            Cow::Borrowed(_)
        ));
        assert_eq!(scrub(&["päss"], "x päss y"), "x *** y");
    }

    #[test]
    fn overlapping_secrets_leave_no_part_of_either() {
        assert_eq!(scrub(&["abc", "bcd"], "xabcdx"), "x***x");
        assert_eq!(scrub(&["aa"], "aaa"), "***");
        assert_eq!(scrub(&["ab"], "abab"), "***", "touching runs are one");
        assert_eq!(scrub(&["ab"], "ab ab"), "*** ***");
    }

    #[test]
    fn a_secret_inside_another_is_hidden_with_it() {
        assert_eq!(scrub(&["pass", "password"], "password1 pass"), "***1 ***");
        assert_eq!(scrub(&["password", "pass"], "mypassword"), "my***");
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let s = Scrubber::new(["", ""]);
        assert!(s.is_empty());
        assert_eq!(s.scrub("text"), "text");
        assert_eq!(scrub(&["", "pw"], "pw"), "***");
    }

    #[test]
    fn a_stream_is_scrubbed_however_it_is_cut() {
        let secrets = ["secret", "cre", "tt"];
        let text = b"a secret, secrettt, and ttt; secre cret secre".repeat(3);
        let whole = Scrubber::new(secrets).scrub_bytes(&text).into_owned();
        for chunk in [1, 2, 3, 5, 7, 64] {
            let s = Scrubber::new(secrets);
            let mut stream = s.stream();
            let mut out = Vec::new();
            for part in text.chunks(chunk) {
                stream.feed(part, &mut out);
            }
            stream.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&whole),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_task_scrubs_the_values_of_its_secret_inputs() {
        let task: TaskMessage = serde_json::from_value(json!({
            "id": crate::domain::TaskId::new(), "workflow_id": crate::domain::WorkflowId::new(),
            "name": "t", "server_id": "s", "group": "script", "config": "",
            "inputs": {"PW": "hunter2", "PLAIN": "hello", "G": {"w1": "g1"}},
            "timeout_s": 5, "attempt": 1, "secrets": ["PW", "G"],
        }))
        .unwrap();
        let s = Scrubber::of_task(&task);
        let mut r =
            TaskResult::from_streams(1, 0, "hunter2 hello g1".into(), "{\"w1\":\"g1\"}".into());
        r.outputs.insert("out".into(), json!({"k": ["x hunter2"]}));
        r.outputs.insert("pw".into(), json!("hunter2"));
        let declared = [OutputSpec {
            name: "pw".into(),
            error_output: false,
            secret: true,
        }];
        let r = s.scrub_result(r, &declared);
        assert_eq!(r.stdout, "*** hello ***");
        assert_eq!(r.stdout_bytes, 13);
        assert_eq!(r.stdout_sha256, sha256_hex(b"*** hello ***"));
        assert_eq!(r.stderr, "***");
        assert_eq!(r.outputs["out"], json!({"k": ["x ***"]}));
        assert_eq!(
            r.outputs["pw"], "hunter2",
            "a secret output is the dispatcher's"
        );
    }
}
