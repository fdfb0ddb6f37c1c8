//! Offline benchmarks run by `controller bench …`: each runs the production code paths on
//! recorded or synthetic data, never a copy of them.

pub mod detect;
pub mod nab;
