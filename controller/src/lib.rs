//! The Medic controller.
//!
//! Data path, one module per step: `ingest` (agent streams, dedup, group commit) → `store`
//! (embedded | ClickHouse) → detection, remediation and publishing as they land. `api` serves
//! /healthz, /metrics and /api/v1; `server` wires it all together.

pub mod act;
pub mod api;
pub mod bench;
pub mod config;
pub mod decide;
pub mod detect;
pub mod ha;
pub mod ingest;
pub mod publish;
pub mod rules;
pub mod security;
pub mod server;
pub mod store;
pub mod telemetry;
