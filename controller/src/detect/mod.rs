//! Detection: turning raw samples into evidence. `anomaly` scores every incoming sample of every
//! series, streaming and from the past only; `outlier` compares nodes of one role; `changepoint`
//! finds level shifts; `forecast` says when a resource runs out. `engine` runs them all on the
//! stored batches, off the ingest path; `exposition` puts their results on /metrics.

pub mod anomaly;
pub mod changepoint;
pub mod engine;
pub mod exposition;
pub mod forecast;
pub mod forecast_bench;
pub mod outlier;
