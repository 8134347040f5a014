//! The events of a `text/event-stream` body. The parsing (the WHATWG rules:
//! events end at a blank line; `id`, `event` and `data` fields, several
//! `data` lines joined with `\n`; comment lines and unknown fields ignored;
//! `\n`, `\r\n` and `\r` all end a line; any chunking) is the `sse-stream`
//! crate's. This module only turns its raw blocks into the events the client
//! acts on: a block without `data` (a lone `id` or `retry`) is skipped, and
//! an absent or empty `event` is `message`.

use bytes::Buf;
use futures_util::{Stream, StreamExt, TryStream};
use sse_stream::SseByteStream;

/// A body that could not be read or decoded (invalid UTF-8 in a field); it
/// is the last item of the stream.
pub use sse_stream::Error as SseError;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id` field of this event, if it had one.
    pub id: Option<String>,
    /// The `event` field; `message` when absent.
    pub event: String,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// The events of a stream of byte chunks, such as reqwest's
/// `Response::bytes_stream()`. After an error the stream ends.
pub fn sse_events<S>(bytes: S) -> impl Stream<Item = Result<SseEvent, SseError>>
where
    S: TryStream,
    S::Ok: Buf,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    SseByteStream::new(bytes).filter_map(|block| {
        std::future::ready(match block {
            Ok(sse) => sse.data.map(|data| {
                Ok(SseEvent {
                    id: sse.id,
                    event: sse
                        .event
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "message".into()),
                    data,
                })
            }),
            Err(e) => Some(Err(e)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn parse(chunks: Vec<&[u8]>) -> Vec<SseEvent> {
        let chunks = chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)));
        sse_events(futures_util::stream::iter(chunks))
            .map(|e| e.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_in_any_chunking() {
        let stream: &[u8] = b": keep-alive\n\nid: 7\nevent: task\ndata: {\"a\":1}\n\r\nevent: end\r\ndata: x\r\ndata: y\r\r";
        let want = vec![
            SseEvent {
                id: Some("7".into()),
                event: "task".into(),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                id: None,
                event: "end".into(),
                data: "x\ny".into(),
            },
        ];
        for split in 0..stream.len() {
            let got = parse(vec![&stream[..split], &stream[split..]]).await;
            assert_eq!(got, want, "split at {split}");
        }
        let bytewise = parse(stream.chunks(1).collect()).await;
        assert_eq!(bytewise, want, "one byte per chunk");
    }

    #[tokio::test]
    async fn comments_and_data_less_blocks_dispatch_nothing() {
        assert!(
            parse(vec![b":\n\n: ping\n\nid: 3\n\nretry: 10\n\n"])
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn unknown_fields_ignored_and_event_defaults_to_message() {
        let got = parse(vec![b"foo: bar\ndata\nevent:\n\n"]).await;
        assert_eq!(
            got,
            vec![SseEvent {
                id: None,
                event: "message".into(),
                data: String::new(),
            }]
        );
    }

    #[tokio::test]
    async fn an_unfinished_last_event_is_dropped() {
        assert!(parse(vec![b"id: 1\ndata: half"]).await.is_empty());
    }
}
