//! The OpenAPI schemas of the domain's types, which know nothing of
//! OpenAPI: the closed enums as string enums, the ids as UUID strings, and
//! the two types whose JSON is hand-written (`TaskCounts`, `OutputSpec`).
//! The views and inputs of this layer derive their schemas from these.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{
    Delivery, FieldError, OnDependencyFailure, OutputSpec, ServerKind, TaskCounts, TaskId,
    TaskState, WorkflowId, WorkflowState,
};

/// A string enum named `$name` with these values and description.
macro_rules! string_enum {
    ($ty:ty, $name:literal, $description:expr, $values:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let description: Option<&str> = $description;
                RefOr::T(Schema::Object(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(description)
                        .enum_values(Some($values))
                        .build(),
                ))
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_enum!(
    TaskState,
    "TaskState",
    Some("Where a task is in its life. One closed set; the store persists these names."),
    TaskState::ALL.map(TaskState::as_str)
);
string_enum!(
    WorkflowState,
    "WorkflowState",
    Some("Derived from a workflow's tasks (and its cancel flag)."),
    ["empty", "running", "succeeded", "failed", "cancelled"]
);
string_enum!(
    OnDependencyFailure,
    "OnDependencyFailure",
    None,
    [OnDependencyFailure::Skip, OnDependencyFailure::Run].map(OnDependencyFailure::as_str)
);
string_enum!(
    Delivery,
    "Delivery",
    None,
    [Delivery::AtLeastOnce, Delivery::AtMostOnce].map(Delivery::as_str)
);
string_enum!(
    ServerKind,
    "ServerKind",
    Some("What consumes a server's queue (SPEC 2, 5)."),
    [ServerKind::Guest, ServerKind::Oslo].map(ServerKind::as_str)
);

/// An id: a UUID string.
macro_rules! uuid_id {
    ($ty:ty, $name:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                        .build(),
                ))
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

uuid_id!(WorkflowId, "WorkflowId");
uuid_id!(TaskId, "TaskId");

impl PartialSchema for FieldError {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .description(Some(
                    "One problem with a submitted value: where it is, and what is wrong.",
                ))
                .property("field", ObjectBuilder::new().schema_type(Type::String))
                .required("field")
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("message")
                .build(),
        ))
    }
}

impl ToSchema for FieldError {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FieldError")
    }
}

impl PartialSchema for TaskCounts {
    fn schema() -> RefOr<Schema> {
        let mut obj = ObjectBuilder::new()
            .description(Some(
                "Number of tasks in each state; every state is present",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for st in TaskState::ALL {
            obj = obj
                .property(
                    st.as_str(),
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .required(st.as_str());
        }
        RefOr::T(Schema::Object(obj.build()))
    }
}

impl ToSchema for TaskCounts {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TaskCounts")
    }
}

impl PartialSchema for OutputSpec {
    fn schema() -> RefOr<Schema> {
        let full = ObjectBuilder::new()
            .property("name", ObjectBuilder::new().schema_type(Type::String))
            .required("name")
            .property(
                "error_output",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(
                        "Heat's rule: if this output comes back non-empty, the task failed",
                    )),
            )
            .property(
                "secret",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(
                        "Its value is a secret: sealed in the store, shown as \"***\", and a secret input of the tasks that refer to it (shown only when true)",
                    )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .description(Some(
                    "A declared output: a bare name, or {name, error_output, secret} (responses always use the object)",
                ))
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(full)
                .build(),
        ))
    }
}

impl ToSchema for OutputSpec {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OutputSpec")
    }
}
