//! Approval gates (SPEC 7.3): a person approves (→ `succeeded`) or
//! rejects (→ `failed`) a gate that waits in `running`; the decision, the
//! comment and the time are its result, and its dependents are released
//! as after any end.

use tracing::instrument;

use super::release::walk;
use super::replies::{Retry, end_attempt};
use super::rerun::operated_task;
use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::domain::{TaskState, WorkflowId, check_text};
use crate::protocol::{Decision, TaskResult, timestamp};

/// The longest comment on a decision, in characters.
pub const MAX_COMMENT_LEN: usize = 4096;

impl App {
    /// Approves (`approve`) or rejects an approval gate that waits for a
    /// decision.
    ///
    /// # Errors
    /// Unknown workflow or task (404); a comment too long or with NUL
    /// (422); a cancelled workflow, a task that is no gate, or a gate not
    /// waiting for a decision (409).
    #[instrument(skip_all, fields(workflow_id = %workflow, task_id, approve))]
    pub async fn decide_gate(
        &self,
        workflow: WorkflowId,
        reference: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<(), AppError> {
        if let Some(c) = &comment {
            let problem = check_text(c).err().or_else(|| {
                (c.chars().count() > MAX_COMMENT_LEN)
                    .then(|| format!("must be at most {MAX_COMMENT_LEN} characters"))
            });
            if let Some(p) = problem {
                return Err(AppError::invalid(
                    "invalid_comment",
                    format!("comment: {p}"),
                ));
            }
        }
        let now = now_us();
        let mut tx = self.begin().await?;
        let (wf, task) = operated_task(&mut tx, workflow, reference).await?;
        if !task.is_gate() {
            return Err(AppError::conflict(
                "not_an_approval",
                format!("task {:?} is not an approval gate", task.name),
            ));
        }
        if task.state() != TaskState::Running {
            return Err(AppError::conflict(
                "approval_not_pending",
                format!(
                    "approval {:?} does not wait for a decision ({})",
                    task.name,
                    task.state()
                ),
            ));
        }
        let decision = if approve { "approved" } else { "rejected" };
        let mut result = TaskResult::from_streams(
            task.attempt as u32,
            i64::from(!approve),
            String::new(),
            String::new(),
        );
        if !approve {
            result.error = Some(match &comment {
                Some(c) => format!("rejected: {c}"),
                None => "rejected".to_owned(),
            });
        }
        result.decision = Some(Decision {
            decision: decision.to_owned(),
            comment,
            at: timestamp(now),
        });
        let mut uow = UnitOfWork::default();
        uow.note_paused(wf.id, wf.paused);
        let id = task.id;
        end_attempt(&mut uow, task, &result, Retry::Never, wf.paused, now)?;
        walk(&mut tx, &mut uow, &self.config, vec![id], now).await?;
        self.commit(tx, uow, now).await?;
        Ok(())
    }
}
