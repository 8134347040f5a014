//! `GET /v1/workflows/{wf}/tasks/{task}/output`: a task's live output
//! (SPEC 7.5), as workers sent it while the attempt ran. Without `follow`,
//! the text kept so far; with `follow=true`, server-sent events `stdout` and
//! `stderr`, each with id `<attempt>:<stream>:<offset>` so a client resumes
//! with `Last-Event-ID` without gaps or repeats, and an `end` event once the
//! attempt ended. Read from the store: any dispatcher sharing it serves it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::events::{next_commit, stream_permit};
use super::extract::QueryParams;
use super::{AppState, workflow_id};
use crate::domain::{TaskId, TaskState};
use crate::protocol::OutputStream;
use crate::store::ChunkRow;

/// Chunks read from the store at once.
const PAGE: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct OutputQuery {
    /// `true`: server-sent events until the attempt ends.
    follow: Option<bool>,
    /// Which attempt (default: the current one).
    attempt: Option<i64>,
}

/// The live output kept of one attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputView {
    /// The attempt it is of.
    pub attempt: i64,
    /// Standard output as sent so far.
    pub stdout: String,
    /// Standard error as sent so far.
    pub stderr: String,
    /// Whether a stream reached `dispatch.max_live_output_bytes` (the
    /// result keeps head and tail).
    pub truncated: bool,
    /// Whether the attempt has ended.
    pub ended: bool,
}

/// The data of a `stdout` or `stderr` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputEvent {
    /// The attempt it is of.
    pub attempt: i64,
    /// Where `text` starts in its stream, in bytes.
    pub offset: i64,
    /// What the task printed.
    pub text: String,
    /// The stream's live output stops here (its cap); `text` is a marker.
    pub truncated: bool,
}

/// A task's live output: the text kept so far, or (`follow=true`)
/// server-sent events `stdout` and `stderr` (data: an `OutputEvent`; id:
/// `<attempt>:<stream>:<offset>`, for `Last-Event-ID`) and a last `end`
/// event (data: `{"attempt", "state"}`) once the attempt ended.
#[utoipa::path(get, path = "/workflows/{wf}/tasks/{task}/output", tag = "tasks",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event (`<attempt>:<stream>:<offset>`)"),
        OutputQuery,
    ),
    responses(
        (status = 200, description = "The output so far (JSON), or with `follow=true` a `text/event-stream`",
            body = OutputView),
        (status = 400, description = "Last-Event-ID is not an event id of this stream", body = ErrorBody),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ErrorBody),
        (status = 503, description = "api.max_event_streams are open; see Retry-After", body = ErrorBody),
    ))]
pub(super) async fn output(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    QueryParams(q): QueryParams<OutputQuery>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let wf = workflow_id(&wf)?;
    let row = state.app.task(wf, &task).await?;
    let resume = resume_point(&headers)?;
    let attempt = resume
        .as_ref()
        .map(|r| r.0)
        .or(q.attempt)
        .unwrap_or(row.attempt);
    if q.follow != Some(true) {
        let mut view = OutputView {
            attempt,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            ended: attempt_ended(row.state(), row.attempt, attempt),
        };
        let mut after = 0;
        loop {
            let page = state
                .store()
                .output_after(row.id, attempt, after, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for c in page {
                if c.truncated {
                    view.truncated = true;
                } else if c.stream == "stderr" {
                    view.stderr.push_str(&c.data);
                } else {
                    view.stdout.push_str(&c.data);
                }
            }
        }
        return Ok(Json(view).into_response());
    }
    let after = match resume {
        Some((a, stream, offset)) => state
            .store()
            .output_chunk_id(row.id, a, stream.as_str(), offset)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_last_event_id",
                    "Last-Event-ID names no output of this task",
                )
            })?,
        None => 0,
    };
    let cursor = Cursor {
        _permit: stream_permit(&state)?,
        commits: state.app.commits(),
        state,
        task: row.id,
        workflow: wf,
        attempt,
        after,
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        c.next_event().await.map(|e| (Ok::<_, Infallible>(e), c))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Whether `attempt` of a task now at `current` in `state` has ended.
fn attempt_ended(state: TaskState, current: i64, attempt: i64) -> bool {
    attempt < current || (attempt == current && state.is_terminal())
}

/// `Last-Event-ID: <attempt>:<stream>:<offset>`, if sent.
fn resume_point(headers: &HeaderMap) -> Result<Option<(i64, OutputStream, i64)>, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_last_event_id",
            "Last-Event-ID must be <attempt>:<stream>:<offset>",
        )
    };
    let text = raw.to_str().map_err(|_| bad())?;
    let mut parts = text.trim().split(':');
    let (Some(a), Some(s), Some(o), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(Some((
        a.parse().map_err(|_| bad())?,
        OutputStream::parse(s).ok_or_else(bad)?,
        o.parse().map_err(|_| bad())?,
    )))
}

/// Where one client's output stream stands.
struct Cursor {
    _permit: tokio::sync::OwnedSemaphorePermit,
    state: AppState,
    task: TaskId,
    workflow: crate::domain::WorkflowId,
    attempt: i64,
    /// The store id of the last chunk sent.
    after: i64,
    pending: VecDeque<ChunkRow>,
    commits: watch::Receiver<u64>,
    done: bool,
}

impl Cursor {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                self.after = c.id;
                return Some(render(c));
            }
            if self.done {
                return None;
            }
            self.commits.borrow_and_update();
            if self.read().await? {
                continue;
            }
            let row = self
                .state
                .store()
                .task_by_ref(self.workflow, &self.task.to_string())
                .await
                .ok()?;
            let ended = row
                .as_ref()
                .is_none_or(|t| attempt_ended(t.state(), t.attempt, self.attempt));
            if ended {
                // What came with the end goes out first.
                if self.read().await? {
                    continue;
                }
                self.done = true;
                let state = row.map_or("deleted", |t| t.state().as_str());
                let data = serde_json::json!({"attempt": self.attempt, "state": state});
                return Some(Event::default().event("end").data(data.to_string()));
            }
            if !next_commit(&self.state, &mut self.commits).await {
                return None;
            }
        }
    }

    /// Reads the next chunks into `pending`; `Some(true)` if there were
    /// some, `None` on a store failure (the stream ends; the client resumes).
    async fn read(&mut self) -> Option<bool> {
        let page = self
            .state
            .store()
            .output_after(self.task, self.attempt, self.after, PAGE)
            .await
            .ok()?;
        let found = !page.is_empty();
        self.pending.extend(page);
        Some(found)
    }
}

fn render(c: ChunkRow) -> Event {
    let id = format!("{}:{}:{}", c.attempt, c.stream, c.offset);
    let data = OutputEvent {
        attempt: c.attempt,
        offset: c.offset,
        text: c.data,
        truncated: c.truncated,
    };
    let event = Event::default().id(id).event(c.stream);
    match serde_json::to_string(&data) {
        Ok(d) => event.data(d),
        Err(_) => event.data("{}"),
    }
}
