//! Act: the executors that carry out playbook steps. Each target kind has its own executor
//! behind [`Executor`]-shaped functions — ClickHouse statements here; the agent's service restart
//! and Kubernetes pod/scale executors beside it.

pub mod agent;
pub mod clickhouse;
pub mod executor;
pub mod kube;

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("nothing to do: {0}")]
    NothingToDo(String),
    #[error("target unavailable: {0}")]
    Unavailable(String),
    #[error("failed: {0}")]
    Failed(String),
}
