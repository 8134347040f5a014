//! Live output (SPEC 7.5): what a running task printed and has not been
//! sent yet, per stream, cut into chunks of whole UTF-8 characters at most
//! [`MAX_CHUNK`] bytes long, up to the dispatcher's cap per stream. The
//! process's readers feed it; the handler's loop takes the chunks every
//! [`PERIOD`] and sends them as non-final replies (a chunk whose publish
//! failed is sent again, so none is lost or skipped). This module knows
//! nothing of processes or AMQP.

use std::sync::Mutex;
use std::time::Duration;

use crate::protocol::{OutputChunk, OutputStream};

/// How often new output is sent, at most.
pub const PERIOD: Duration = Duration::from_millis(250);
/// The most bytes of one chunk.
pub const MAX_CHUNK: usize = 64 * 1024;

/// One stream's output not sent yet.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes read and not taken yet.
    buf: Vec<u8>,
    /// The stream offset of `buf[0]`.
    offset: u64,
    /// Bytes fed in all (kept or not).
    fed: u64,
    /// The cap was reached and its marker taken.
    stopped: bool,
}

/// The live output of one attempt.
#[derive(Debug)]
pub struct Live {
    cap: u64,
    streams: [Mutex<Pending>; 2],
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

impl Live {
    /// Live output of at most `cap` bytes per stream.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            streams: Default::default(),
        }
    }

    /// Takes bytes the process wrote on `stream`; beyond the cap they are
    /// only counted.
    pub fn feed(&self, stream: OutputStream, data: &[u8]) {
        let mut p = self.streams[index(stream)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(p.fed) as usize;
        p.buf.extend_from_slice(&data[..data.len().min(room)]);
        p.fed += data.len() as u64;
    }

    /// The chunks ready to send, stdout's first. A character cut by the end
    /// of what was read waits for its other bytes unless `last` (the
    /// process ended). Past the cap, one marker chunk says the live output
    /// stopped there.
    pub fn take(&self, last: bool) -> Vec<OutputChunk> {
        let mut out = Vec::new();
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let mut p = self.streams[index(stream)]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while !p.buf.is_empty() {
                let mut n = p.buf.len().min(MAX_CHUNK);
                if n < p.buf.len() || !last {
                    n = whole_chars(&p.buf[..n]);
                }
                if n == 0 {
                    if last || p.buf.len() >= 4 {
                        // Not UTF-8 at all: send a byte, shown lossily.
                        n = 1;
                    } else {
                        break;
                    }
                }
                let data = String::from_utf8_lossy(&p.buf[..n]).into_owned();
                let offset = p.offset;
                p.buf.drain(..n);
                p.offset += n as u64;
                out.push(OutputChunk {
                    stream,
                    offset,
                    data,
                    truncated: false,
                });
            }
            if p.fed > self.cap && !p.stopped && p.buf.is_empty() {
                p.stopped = true;
                out.push(OutputChunk {
                    stream,
                    offset: self.cap,
                    data: format!(
                        "\n[bora: live output stops after {} bytes; the result keeps the head and the tail]\n",
                        self.cap
                    ),
                    truncated: true,
                });
            }
        }
        out
    }
}

/// The length of the longest prefix of `bytes` that does not end inside a
/// UTF-8 character (invalid bytes count as whole).
fn whole_chars(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes: look back at most 3 for its start.
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte
        }
        let need = match b {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if back >= need {
            bytes.len()
        } else {
            bytes.len() - back
        };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[OutputChunk], stream: OutputStream) -> String {
        chunks
            .iter()
            .filter(|c| c.stream == stream && !c.truncated)
            .map(|c| c.data.as_str())
            .collect()
    }

    #[test]
    fn chunks_carry_offsets_and_never_cut_a_character() {
        let live = Live::new(1 << 20);
        let euro = "€".as_bytes(); // 3 bytes
        live.feed(OutputStream::Stdout, b"ab");
        live.feed(OutputStream::Stdout, &euro[..2]);
        let first = live.take(false);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].offset, first[0].data.as_str()), (0, "ab"));
        live.feed(OutputStream::Stdout, &euro[2..]);
        live.feed(OutputStream::Stderr, b"oops");
        let second = live.take(false);
        assert_eq!((second[0].offset, second[0].data.as_str()), (2, "€"));
        assert_eq!(second[1].stream, OutputStream::Stderr);
        assert!(live.take(false).is_empty(), "nothing new, nothing sent");
    }

    #[test]
    fn big_output_is_cut_into_chunks_and_stops_at_the_cap() {
        let live = Live::new(150_000);
        let line = "x".repeat(999) + "\n";
        for _ in 0..200 {
            live.feed(OutputStream::Stdout, line.as_bytes());
        }
        let chunks = live.take(true);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.data.len()).collect();
        assert!(
            sizes[..sizes.len() - 1].iter().all(|n| *n <= MAX_CHUNK),
            "{sizes:?}"
        );
        let all = text(&chunks, OutputStream::Stdout);
        assert_eq!(all.len(), 150_000);
        let marker = chunks.last().unwrap();
        assert!(marker.truncated && marker.offset == 150_000, "{marker:?}");
        live.feed(OutputStream::Stdout, b"more");
        assert!(live.take(true).is_empty(), "one marker, then nothing");
    }

    #[test]
    fn a_lone_broken_byte_goes_out_at_the_end() {
        let live = Live::new(100);
        live.feed(OutputStream::Stdout, &[b'a', 0xe2]);
        assert_eq!(live.take(false)[0].data, "a");
        let last = live.take(true);
        assert_eq!((last[0].offset, last[0].data.as_str()), (1, "\u{fffd}"));
    }
}
