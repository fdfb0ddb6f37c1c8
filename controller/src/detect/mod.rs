//! Detection: turning raw samples into "this series is misbehaving" evidence.
//!
//! `anomaly` scores every incoming sample of every series, streaming and from the past only.

pub mod anomaly;
