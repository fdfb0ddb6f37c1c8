//! agentd: the Medic node agent.
//!
//! Data path, one module per step: `collect` (host metrics, logs) → `spool` (crash-safe disk
//! queue; `entry` is what one record holds) → `stream` (gRPC to the controller). `agent` wires
//! them together; `http` serves /healthz and /metrics; `telemetry` holds the agent's own metrics.

pub mod agent;
pub mod collect;
pub mod command;
pub mod config;
pub mod entry;
pub mod http;
pub mod security;
pub mod spool;
pub mod stream;
pub mod telemetry;
