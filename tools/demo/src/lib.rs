//! The local end-to-end demo of sfn-pacer (`make demo`, `make watch`).
//!
//! - [`run`]: moto + `cargo lambda watch --only-lambda-apis` + one or two [`deployment`]s
//!   (each with N `starter` processes, `local-esm` and `producer`) sharing one budget, a live
//!   line, then the [`accounting`] per deployment, the budget check and the [`report`].
//! - [`serve`]: moto on a fixed port and the function under plain `cargo lambda watch`, for
//!   `make invoke`.
//! - [`cap`]: `--max-running`: executions that end, their events delivered as EventBridge would.
//! - [`emf`], [`rate`], [`accounting`]: the arithmetic, without a network.

pub mod accounting;
pub mod cap;
pub mod deployment;
pub mod emf;
pub mod feed;
pub mod live;
pub mod rate;
pub mod report;
pub mod run;
pub mod serve;
pub mod stack;
pub mod tools;
