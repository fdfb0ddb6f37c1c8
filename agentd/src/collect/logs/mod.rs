//! Log tailing. PLACEHOLDER: being implemented.

use medic_proto::v1::LogRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct TailerOptions {
    pub globs: Vec<String>,
    pub max_line_bytes: usize,
    pub read_from: ReadFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    Beginning,
    #[default]
    End,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailCursor {
    pub files: Vec<FileCursor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCursor {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid log glob {glob:?}: {message}")]
    Glob { glob: String, message: String },
    #[error("watching log files: {0}")]
    Watch(String),
}

pub struct Tailer {}

impl Tailer {
    pub fn new(_opts: TailerOptions, _cursor: Option<TailCursor>) -> Result<Self, TailError> {
        Ok(Self {})
    }
    pub fn poll(&mut self, _max_records: usize) -> Vec<LogRecord> {
        Vec::new()
    }
    pub fn cursor(&self) -> TailCursor {
        TailCursor::default()
    }
    pub async fn changed(&mut self) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await
    }
}
