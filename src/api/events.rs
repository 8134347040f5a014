//! `GET /v1/workflows/{wf}/events`: the workflow's state changes as
//! server-sent events, read from the store's event log.
//!
//! Each event's `id` is its row id in the log (increasing in commit order),
//! so a client that reconnects with `Last-Event-ID` gets exactly the events
//! after the last one it saw: none missing, none repeated. Because the log is
//! in the store, any dispatcher sharing the store can serve the stream. The
//! stream wakes at once after each commit of this process (the tracker's
//! commit signal) and polls the log every second for commits of others.
//! Once the workflow has ended (succeeded, failed, cancelled, or deleted) and
//! every event was sent, a last `end` event says so and the stream closes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;

use super::error::{ApiError, ErrorBody};
use super::views::{EventView, StreamEnd};
use super::{AppState, workflow_id};
use crate::domain::{WorkflowId, WorkflowState};
use crate::store::{EventRow, StoreError};

/// Events read from the log at once.
const PAGE: u32 = 500;
/// How often the log is read without a local commit (other dispatchers).
const POLL: Duration = Duration::from_secs(1);
/// Comment lines that keep idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams a workflow's state changes (`text/event-stream`). Events are
/// named after their kind: `task` (a task entered `state`) and `workflow`
/// (the workflow was cancelled), with an [`EventView`] as data and the
/// event's log id as SSE `id`. A final `end` event (data: [`StreamEnd`],
/// no id) is sent once the workflow has ended and everything before it was
/// sent; then the stream closes. Comment lines keep an idle stream alive.
#[utoipa::path(get, path = "/workflows/{wf}/events", tag = "workflows",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("Last-Event-ID" = Option<i64>, Header,
            description = "Resume after this event id (what an SSE client sends when it reconnects)"),
    ),
    responses(
        (status = 200, description = "Server-sent events: `task` and `workflow` events carry an EventView, the final `end` event a StreamEnd",
            body = String, content_type = "text/event-stream"),
        (status = 400, description = "Last-Event-ID is not an event id", body = ErrorBody),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 503, description = "api.max_event_streams are open; see Retry-After", body = ErrorBody),
    ))]
pub(super) async fn stream(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let wf = workflow_id(&wf)?;
    state
        .store()
        .workflow(wf)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {wf} not found")))?;
    let after = last_event_id(&headers)?;
    let permit = stream_permit(&state)?;
    let cursor = Cursor {
        _permit: permit,
        commits: state.app.commits(),
        state,
        workflow: wf,
        after,
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        c.next_event().await.map(|e| (Ok(e), c))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A place among `api.max_event_streams` for one more open stream (event
/// streams and live output alike), given back when the stream is dropped.
///
/// # Errors
/// 503 `too_many_streams` with `Retry-After` while every place is taken.
pub(super) fn stream_permit(
    state: &AppState,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} event streams are open, the most api.max_event_streams allows; try again later",
                state.settings.api.max_event_streams
            ),
        );
        e.retry_after_s = Some(5);
        e
    })
}

/// Waits for this dispatcher's next commit, or [`POLL`] for another
/// dispatcher's; `false` at shutdown (the stream ends).
pub(super) async fn next_commit(state: &AppState, commits: &mut watch::Receiver<u64>) -> bool {
    tokio::select! {
        _ = state.shutdown.cancelled() => false,
        _ = async {
            if commits.changed().await.is_err() {
                // No more commits will come from here; rely on polls.
                std::future::pending::<()>().await;
            }
        } => true,
        _ = tokio::time::sleep(POLL) => true,
    }
}

fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(0);
    };
    raw.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(|id| id.max(0))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "Last-Event-ID must be the integer id of an event",
            )
        })
}

/// Where one client's stream stands.
struct Cursor {
    /// The stream's place among `api.max_event_streams`, given back when
    /// the stream is dropped (it ended, or its client went away).
    _permit: tokio::sync::OwnedSemaphorePermit,
    state: AppState,
    workflow: WorkflowId,
    /// The id of the last event sent (0: none yet).
    after: i64,
    /// Read from the log, not yet sent.
    pending: VecDeque<EventRow>,
    /// Changes after each local commit.
    commits: watch::Receiver<u64>,
    /// The `end` event was sent.
    done: bool,
}

impl Cursor {
    /// The next event, or `None` when the stream ends (workflow ended,
    /// shutdown, or a store failure: the client resumes with Last-Event-ID).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                self.after = row.id;
                return Some(render(row));
            }
            if self.done {
                return None;
            }
            // Mark the current commit as seen before reading, so a commit
            // that lands after the read wakes the wait below.
            self.commits.borrow_and_update();
            if self.read().await? {
                continue;
            }
            match self.ended().await {
                Err(e) => {
                    tracing::warn!(workflow_id = %self.workflow, error = %e, "event stream cannot read the store; closing it");
                    return None;
                }
                Ok(Some(state)) => {
                    // Events committed between the read and the state read
                    // go out before the end.
                    if self.read().await? {
                        continue;
                    }
                    self.done = true;
                    let end = StreamEnd {
                        workflow_id: self.workflow,
                        state,
                    };
                    return Some(
                        Event::default()
                            .event("end")
                            .json_data(end)
                            .unwrap_or_else(|_| Event::default().event("end")),
                    );
                }
                Ok(None) => {}
            }
            if !next_commit(&self.state, &mut self.commits).await {
                return None;
            }
        }
    }

    /// Reads the next page of the log into `pending`; `Some(true)` if it
    /// found events, `None` on a store failure.
    async fn read(&mut self) -> Option<bool> {
        match self
            .state
            .store()
            .events_after(self.workflow, self.after, PAGE)
            .await
        {
            Ok(rows) => {
                let found = !rows.is_empty();
                self.pending.extend(rows);
                Some(found)
            }
            Err(e) => {
                tracing::warn!(workflow_id = %self.workflow, error = %e, "event stream cannot read the store; closing it");
                None
            }
        }
    }

    /// The workflow's final state if it has ended (`deleted` if it is gone).
    async fn ended(&self) -> Result<Option<String>, StoreError> {
        let store = self.state.store();
        let Some(row) = store.workflow(self.workflow).await? else {
            return Ok(Some("deleted".into()));
        };
        let counts = store.task_counts(self.workflow).await?;
        Ok(match WorkflowState::derive(row.cancelled, &counts) {
            s @ (WorkflowState::Succeeded | WorkflowState::Failed | WorkflowState::Cancelled) => {
                Some(s.as_str().to_owned())
            }
            WorkflowState::Empty | WorkflowState::Running => None,
        })
    }
}

fn render(row: EventRow) -> Event {
    let id = row.id.to_string();
    let kind = row.kind.clone();
    let event = Event::default().id(id).event(kind);
    match serde_json::to_string(&EventView::from(row)) {
        Ok(data) => event.data(data),
        Err(_) => event.data("{}"),
    }
}
