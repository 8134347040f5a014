//! The workflow entity: a named set of tasks. Its state is derived from its
//! tasks' ([`super::WorkflowState::derive`]); what it holds itself is its
//! name, description and whether it was cancelled.

use super::WorkflowId;

/// A workflow as bora holds it.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Never changes.
    pub id: WorkflowId,
    /// For people; not unique.
    pub name: String,
    /// For people.
    pub description: Option<String>,
    /// Cancelled through the API: it takes no new tasks.
    pub cancelled: bool,
    /// Paused through the API: nothing more of it is published until a
    /// resume (tasks already out go on).
    pub paused: bool,
    /// Microseconds since the epoch.
    pub created_at: i64,
    /// The last change of its name, description, cancel or pause flag.
    pub updated_at: i64,
}

impl Workflow {
    /// A new, empty workflow.
    pub fn new(name: String, description: Option<String>, now: i64) -> Self {
        Self {
            id: WorkflowId::new(),
            name,
            description,
            cancelled: false,
            paused: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// Marks it cancelled; returns whether it was not already.
    pub fn cancel(&mut self, now: i64) -> bool {
        if self.cancelled {
            return false;
        }
        self.cancelled = true;
        self.updated_at = now;
        true
    }
}

impl Workflow {
    /// Pauses it; returns whether it was running unpaused before.
    pub fn pause(&mut self, now: i64) -> bool {
        if self.paused || self.cancelled {
            return false;
        }
        self.paused = true;
        self.updated_at = now;
        true
    }

    /// Resumes it; returns whether it was paused.
    pub fn resume(&mut self, now: i64) -> bool {
        if !self.paused {
            return false;
        }
        self.paused = false;
        self.updated_at = now;
        true
    }
}
