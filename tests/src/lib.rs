//! Test support for sfn-pacer: a moto_server harness and fault-injecting endpoints.

pub mod fake_sfn;
pub mod moto;
pub mod sim;
