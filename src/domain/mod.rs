//! The domain: what bora's words mean, with no I/O. Ids ([`ids`]), the task
//! state machine and the derived workflow state ([`state`]), the task entity
//! that alone moves a task's state ([`task`]), workflows ([`workflow`]),
//! what a task is asked to do and the rules for its fields ([`spec`]),
//! servers' labels and what matches them ([`labels`]), secret values and
//! how they are kept and shown ([`secret`]), and the graph rules: release,
//! topological order, cycles ([`graph`]).
//!
//! Everything here is a value in memory. It knows nothing of SQL, AMQP,
//! HTTP or OpenAPI, and nothing of the layers that use it; the
//! architecture test (`tests/architecture.rs`) checks that it imports none.

pub mod graph;
pub mod ids;
pub mod labels;
pub mod refs;
pub mod secret;
pub mod spec;
pub mod state;
pub mod target;
pub mod task;
pub mod workflow;

pub use graph::{Readiness, blocked_by, creates_cycle, readiness, topological_order};
pub use ids::{MAX_SERVER_ID_LEN, ServerId, TaskId, WorkflowId, broker_user, is_broker_user_of};
pub use labels::{
    Labels, MAX_LABEL_LEN, MAX_LABELS, carries_all, check_label, check_label_count,
    check_label_key, check_labels, merge_labels, parse_label,
};
pub use refs::{OutputRef, input_refs};
pub use spec::{
    APPROVAL_GROUP, DEFAULT_RETRY_MAX_DELAY_S, DEFAULT_TIMEOUT_S, Delivery, FieldError,
    MAX_GROUP_LEN, MAX_NAME_LEN, MAX_RETRIES, MAX_RETRY_BACKOFF, MAX_RETRY_DELAY_S,
    MAX_RETRY_EXIT_CODES, MAX_RETRY_MAX_DELAY_S, MAX_TIMEOUT_S, OnDependencyFailure, OutputSpec,
    ServerKind, TaskSpec, check_group, check_input_name, check_name, check_output_name, check_text,
    field_err, ranged,
};
pub use state::{IllegalTransition, TaskCounts, TaskState, WorkflowState};
pub use target::{Batch, BatchSize, Target, TargetMode, child_name};
pub use task::{Corrupt, Failure, Task};
pub use workflow::Workflow;
