//! Crash-safe disk spool. PLACEHOLDER: being implemented.

use std::path::Path;

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: bool,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self { max_bytes: 256 << 20, segment_bytes: 8 << 20, fsync: true }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub bytes: u64,
    pub batches: u64,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub dropped_batches_total: u64,
    pub corrupt_records_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
}

pub struct Spool {}

impl Spool {
    pub fn open(_dir: &Path, _opts: SpoolOptions) -> Result<Self, SpoolError> {
        Ok(Self {})
    }
    pub fn id(&self) -> &str {
        ""
    }
    pub fn append(&mut self, _payload: &[u8]) -> Result<u64, SpoolError> {
        Ok(0)
    }
    pub fn ack(&mut self, _seq: u64) -> Result<(), SpoolError> {
        Ok(())
    }
    pub fn read_after(&self, _after_seq: u64, _max_records: usize, _max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        Ok(Vec::new())
    }
    pub fn last_record(&self) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        Ok(None)
    }
    pub fn stats(&self) -> SpoolStats {
        SpoolStats::default()
    }
}
