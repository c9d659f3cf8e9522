//! The integration tests of sfn-pacer live in `tests/`; what they share is the local stack
//! (`sfn-pacer-local-stack`).
