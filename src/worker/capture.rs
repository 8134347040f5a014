//! Capped capture of one output stream: keeps the head and the tail of what a
//! task printed, and counts and hashes every byte on the way through.
//!
//! A stream is never held whole: at most `cap` bytes stay in memory however much
//! the process writes, while the byte count and SHA-256 cover the whole stream
//! (raw bytes; only the kept text is converted lossily to UTF-8). A task's
//! secrets are scrubbed on the way in, so the count and digest are those of
//! the stream as shown. This module
//! knows nothing of processes or AMQP.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::live::Live;
use super::scrub::{ScrubStream, Scrubber};
use crate::protocol::OutputStream;

/// Size of one read from a pipe.
const CHUNK: usize = 64 * 1024;

/// The kept part of a stream plus its whole-stream length and digest.
pub struct Capture {
    /// Bytes kept at most (head + tail).
    cap: usize,
    /// The first `cap / 2` bytes.
    head: Vec<u8>,
    /// The last bytes seen once the head is full (at most `cap - cap / 2`).
    tail: VecDeque<u8>,
    /// Bytes seen in total.
    total: u64,
    hasher: Sha256,
    /// Scrubs the task's secrets before anything is kept, counted or
    /// hashed; `None` for a task without secrets.
    scrub: Option<ScrubStream>,
    /// Where the kept bytes go too, as they come (live output): scrubbed
    /// like everything else.
    tap: Option<(std::sync::Arc<Live>, OutputStream)>,
}

/// A finished capture.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// Head and tail (with a marker line between them when bytes were dropped),
    /// converted lossily to UTF-8.
    pub text: String,
    pub truncated: bool,
    /// Length of the whole stream.
    pub bytes: u64,
    /// Hex SHA-256 of the whole stream.
    pub sha256: String,
    /// The first bytes of the stream, raw (for parsing and error messages).
    pub raw_head: Vec<u8>,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            hasher: Sha256::new(),
            scrub: None,
            tap: None,
        }
    }

    /// A capture of a stream with `scrubber`'s secrets replaced by `***`
    /// on the way in: what is kept, counted and hashed is the scrubbed
    /// stream.
    pub fn scrubbed(cap: usize, scrubber: &Scrubber) -> Self {
        let mut c = Self::new(cap);
        c.scrub = (!scrubber.is_empty()).then(|| scrubber.stream());
        c
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        match self.scrub.as_mut() {
            None => self.keep(data),
            Some(scrub) => {
                let mut clean = Vec::with_capacity(data.len());
                scrub.feed(data, &mut clean);
                self.keep(&clean);
            }
        }
    }

    /// Keeps, counts and hashes the next (scrubbed) bytes, and hands them
    /// to the live output if there is one.
    fn keep(&mut self, mut data: &[u8]) {
        if let Some((live, stream)) = &self.tap {
            live.feed(*stream, data);
        }
        self.total += data.len() as u64;
        self.hasher.update(data);
        let head_cap = self.cap / 2;
        if self.head.len() < head_cap {
            let n = data.len().min(head_cap - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        let tail_cap = self.cap - head_cap;
        if data.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - tail_cap..]);
        } else {
            self.tail.extend(data);
            let excess = self.tail.len().saturating_sub(tail_cap);
            self.tail.drain(..excess);
        }
    }

    pub fn finish(mut self) -> Captured {
        if let Some(scrub) = self.scrub.take() {
            let mut rest = Vec::new();
            scrub.finish(&mut rest);
            self.keep(&rest);
        }
        let kept = self.head.len() + self.tail.len();
        let omitted = self.total - kept as u64;
        let (head, tail) = self.tail.as_slices();
        let mut bytes = self.head.clone();
        if omitted > 0 {
            bytes.extend_from_slice(format!("\n...[{omitted} bytes omitted]...\n").as_bytes());
        }
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(tail);
        Captured {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            truncated: omitted > 0,
            bytes: self.total,
            sha256: hex(&self.hasher.finalize()),
            raw_head: self.head,
        }
    }
}

impl Captured {
    /// Caps a stream that is already in memory (a hook's `deploy_stdout`).
    pub fn of(data: &[u8], cap: usize) -> Self {
        let mut c = Capture::new(cap);
        c.feed(data);
        c.finish()
    }

    /// The whole stream when it was not cut, as raw bytes.
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.truncated && self.raw_head.len() as u64 == self.bytes).then_some(&self.raw_head)
    }
}

fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Reads `reader` to its end (or until `stop` fires) through a capture.
///
/// A read error ends the capture like an end of stream: what was read is kept.
pub async fn read_capped<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    scrubber: Scrubber,
    stop: CancellationToken,
    tap: Option<(std::sync::Arc<Live>, OutputStream)>,
) -> Captured {
    let mut capture = Capture::scrubbed(cap, &scrubber);
    capture.tap = tap;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            biased;
            r = reader.read(&mut buf) => r,
            () = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => capture.feed(&buf[..n]),
        }
    }
    capture.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sha256_hex;

    #[test]
    fn short_streams_are_kept_whole() {
        let c = Captured::of(b"hello", 16);
        assert_eq!(c.text, "hello");
        assert!(!c.truncated);
        assert_eq!(c.bytes, 5);
        assert_eq!(c.sha256, sha256_hex(b"hello"));
        assert_eq!(c.whole(), Some(&b"hello"[..]));
    }

    #[test]
    fn exactly_the_cap_is_not_truncated() {
        let data: Vec<u8> = (0..16u8).map(|i| b'a' + i).collect();
        let c = Captured::of(&data, 16);
        assert!(!c.truncated);
        assert_eq!(c.text.as_bytes(), &data[..]);
    }

    #[test]
    fn long_streams_keep_head_and_tail_whatever_the_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in [1, 3, 7, 64, 1000] {
            let mut cap = Capture::new(100);
            for part in data.chunks(chunk) {
                cap.feed(part);
            }
            let c = cap.finish();
            assert!(c.truncated);
            assert_eq!(c.bytes, 1000);
            assert_eq!(c.sha256, sha256_hex(&data));
            let expected = format!(
                "{}\n...[900 bytes omitted]...\n{}",
                String::from_utf8_lossy(&data[..50]),
                String::from_utf8_lossy(&data[950..])
            );
            assert_eq!(c.text, expected, "chunk {chunk}");
            assert_eq!(c.whole(), None);
        }
    }

    #[test]
    fn secrets_are_scrubbed_before_anything_is_kept_counted_or_hashed() {
        let s = Scrubber::new(["hunter2"]);
        let data = b"pw=hunter2, again hunter2 and hunter2".repeat(4);
        let clean = String::from_utf8(data.clone())
            .unwrap()
            .replace("hunter2", "***");
        for chunk in [1, 3, 5, 64, 1000] {
            let mut whole = Capture::scrubbed(1024, &s);
            let mut cut = Capture::scrubbed(20, &s);
            for part in data.chunks(chunk) {
                whole.feed(part);
                cut.feed(part);
            }
            let whole = whole.finish();
            assert_eq!(whole.text, clean, "chunk {chunk}");
            assert_eq!(whole.bytes, clean.len() as u64);
            assert_eq!(whole.sha256, sha256_hex(clean.as_bytes()));
            let cut = cut.finish();
            assert!(
                cut.truncated && !cut.text.contains("hunter"),
                "{}",
                cut.text
            );
            assert_eq!(cut.sha256, sha256_hex(clean.as_bytes()));
        }
    }

    #[test]
    fn non_utf8_is_counted_raw_and_shown_lossily() {
        let data = [0xffu8, b'a', 0xfe];
        let c = Captured::of(&data, 16);
        assert_eq!(c.bytes, 3);
        assert_eq!(c.sha256, sha256_hex(&data));
        assert_eq!(c.text, "\u{fffd}a\u{fffd}");
    }
}
