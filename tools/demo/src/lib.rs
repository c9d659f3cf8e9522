//! The local end-to-end demo of sfn-pacer (`make demo`, `make watch`).
//!
//! - [`run`]: moto + `cargo lambda watch --only-lambda-apis` with N `starter` processes +
//!   `local-esm` + `producer`, a live line, then the [`accounting`] and the [`report`].
//! - [`serve`]: moto on a fixed port and the function under plain `cargo lambda watch`, for
//!   `make invoke`.
//! - [`emf`], [`rate`], [`accounting`]: the arithmetic, without a network.

pub mod accounting;
pub mod emf;
pub mod feed;
pub mod live;
pub mod rate;
pub mod report;
pub mod run;
pub mod serve;
pub mod stack;
pub mod tools;
