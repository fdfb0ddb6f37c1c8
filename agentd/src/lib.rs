//! agentd: the Medic node agent.
//!
//! Data path, one module per step:
//! `collect` (host metrics, logs) → `spool` (crash-safe disk queue) → `stream` (gRPC to the controller).
//! `http` serves /healthz and /metrics; `telemetry` holds the agent's own metrics.

pub mod collect;
pub mod config;
pub mod http;
pub mod spool;
pub mod stream;
pub mod telemetry;
