//! Detection: fleet outliers, changepoints and exhaustion forecasts (all built on augurs).

pub mod changepoint;
pub mod engine;
pub mod exposition;
pub mod forecast;
pub mod forecast_bench;
pub mod outlier;
