//! What one spool record holds: the batch, plus the log-tail cursor as of that batch.
//!
//! Keeping the cursor in the same fsynced record as the log lines it covers makes log shipping
//! exactly-once across crashes: after a restart the tailer resumes from the cursor of the newest
//! spooled record, so a line is never both spooled and re-read, nor read and never spooled.

use medic_proto::v1::Batch;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct SpoolEntry {
    #[prost(message, optional, tag = "1")]
    pub batch: Option<Batch>,
    /// JSON of `collect::logs::TailCursor`; empty when no files are tailed.
    #[prost(bytes = "vec", tag = "2")]
    pub tail_cursor: Vec<u8>,
}

impl SpoolEntry {
    pub fn encode_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }
}
