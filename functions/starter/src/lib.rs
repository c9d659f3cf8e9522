//! sfn-pacer: an SQS-triggered Lambda that starts one Step Functions execution per message (or
//! per group of messages), paced under the account's StartExecution quota, idempotent by
//! execution name (in groups, by per-message claims), with a partial batch response.
//!
//! The modules follow the flow: [`event`] → [`plan`] (with [`name`]) → in batch mode
//! [`batch`] and [`claim`] → [`pace`] → [`start`] → [`classify`] → [`handler`] → [`close`]
//! (batched [`dead_letter`]s and visibility changes with [`backoff`]) → response.
//! [`aws`] holds the SDK adapters of the [`start::StartExecution`] and [`queue::Queue`] traits,
//! [`dynamo`] those of [`budget::Store`] (the shared budget of coordinated mode, [`budget`]) and
//! [`claim::ClaimStore`].

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
