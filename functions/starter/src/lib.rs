//! sfn-pacer: an SQS-triggered Lambda that starts one Step Functions execution per message,
//! paced under the account's StartExecution quota, idempotent by execution name, with a
//! partial batch response.
//!
//! The modules follow the flow: [`event`] → [`plan`] (with [`name`]) → [`pace`] →
//! [`start`] → [`classify`] → [`handler`] → [`close`] (batched [`dead_letter`]s and
//! visibility changes with [`backoff`]) → response.
//! [`aws`] holds the SDK adapters of the [`start::StartExecution`] and [`queue::Queue`] traits,
//! [`dynamo`] the one of [`budget::Store`]: the shared budget of coordinated mode ([`budget`]).

pub mod aws;
pub mod backoff;
pub mod batch;
pub mod budget;
pub mod claim;
pub mod claim_check;
pub mod classify;
pub mod close;
pub mod config;
pub mod dead_letter;
pub mod dynamo;
pub mod event;
pub mod handler;
pub mod logs;
pub mod metrics;
pub mod name;
pub mod pace;
pub mod plan;
pub mod queue;
pub mod start;

pub use config::{Config, ConfigError};
pub use handler::{Disposition, Outcome, Starter};
