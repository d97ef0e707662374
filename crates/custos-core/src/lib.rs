//! Custos domain vocabulary: names, tiers, durations, resources and decisions.
//!
//! This crate does no I/O and has no async code; every other crate builds on it.
//!
//! Error convention for the whole workspace: library crates expose one `thiserror` enum per
//! layer (`…Error`), messages lowercase without a final period, user input in backticks.
//! Startup and glue code (the CLI, server bootstrap) use `anyhow` with `.context(..)`.

pub mod approval;
pub mod clock;
pub mod credential;
pub mod decision;
pub mod duration;
pub mod glob;
pub mod ids;
pub mod inject;
pub mod lease;
pub mod names;
pub mod reason;
pub mod registry;
pub mod resource;
pub mod rules;
pub mod task;
pub mod text;
pub mod tier;
pub mod yaml_limits;

pub use approval::{Approval, ApprovalState};
pub use clock::{Clock, SystemClock, UnixMillis};
pub use credential::{CredentialEngine, CredentialRoleSpec, StaticSecret};
pub use decision::{Decision, Outcome};
pub use duration::{BoundedDuration, parse_duration};
pub use ids::{AgentId, ApprovalId, TaskId};
pub use inject::{InjectTarget, InjectValue, LeaseScope, UpstreamCredential};
pub use lease::{Lease, LeaseState};
pub use names::{ExposedTool, NameError};
pub use reason::Reason;
pub use registry::{AgentStatus, Change, ChangeOp, StoredResource};
pub use resource::{
    AgentSpec, Archetype, CallTimeout, HttpUrl, Kind, PolicySpec, Resource, ResourceError,
    StdioCommand, TemplateSpec, TemplateTtl, Transport, UpstreamScope, UpstreamSpec,
    annotation_tier,
};
pub use rules::{ArgConstraint, ArgConstraints, TierRule, ToolEntry};
pub use task::{Task, TaskState};
pub use tier::Tier;
pub mod operator;
pub use operator::{OperatorInfo, Role};
