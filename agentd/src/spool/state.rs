//! Small side files: the spool id and the checkpointed state. Both are replaced atomically
//! (temp file + rename); both are optional for recovery, which can always fall back to what the
//! segment files say.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub(crate) const STATE_FILE: &str = "state";
pub(crate) const ID_FILE: &str = "spool.id";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

const STATE_MAGIC: [u8; 4] = *b"MSS1";
const STATE_LEN: usize = 4 + 4 * 8 + 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub acked: u64,
    /// Highest seq ever assigned + 1 as of the last checkpoint: keeps seqs monotonic even if
    /// segment files vanish.
    pub next_seq: u64,
    pub dropped_total: u64,
    pub corrupt_total: u64,
}

impl State {
    fn encode(&self) -> [u8; STATE_LEN] {
        let mut b = [0u8; STATE_LEN];
        b[0..4].copy_from_slice(&STATE_MAGIC);
        b[4..12].copy_from_slice(&self.acked.to_le_bytes());
        b[12..20].copy_from_slice(&self.next_seq.to_le_bytes());
        b[20..28].copy_from_slice(&self.dropped_total.to_le_bytes());
        b[28..36].copy_from_slice(&self.corrupt_total.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; STATE_LEN] = b.try_into().ok()?;
        if b[0..4] != STATE_MAGIC || crc32fast::hash(&b[..36]).to_le_bytes() != b[36..40] {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Self { acked: u(4), next_seq: u(12), dropped_total: u(20), corrupt_total: u(28) })
    }

    /// `Ok(None)` when absent or unreadable garbage: the caller recovers from segments instead.
    pub fn load(dir: &Path) -> Option<Self> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(b) => {
                let s = Self::decode(&b);
                if s.is_none() {
                    tracing::warn!(path = %path.display(), "spool state file is garbled; ignoring it");
                }
                s
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read spool state file; ignoring it");
                None
            }
        }
    }

    pub fn store(&self, dir: &Path, durable: bool) -> io::Result<()> {
        write_atomic(dir, STATE_FILE, &self.encode(), durable)
    }
}

/// Returns the persisted spool id, creating one if missing or garbled.
pub(crate) fn load_or_create_id(dir: &Path) -> io::Result<String> {
    let path = dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => match uuid::Uuid::parse_str(s.trim()) {
            Ok(u) => return Ok(u.hyphenated().to_string()),
            Err(_) => {
                tracing::warn!(path = %path.display(), "spool id file is garbled; creating a new spool id")
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Invalid UTF-8 is garbage like any other; real I/O errors are not.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(path = %path.display(), "spool id file is garbled; creating a new spool id")
        }
        Err(e) => return Err(e),
    }
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    write_atomic(dir, ID_FILE, format!("{id}\n").as_bytes(), true)?;
    Ok(id)
}

/// Replaces `dir/name` so that readers see either the old or the new content, never a mix.
/// `durable` additionally makes the new content survive power loss before returning.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_state_roundtrip_and_garbage() {
        let s = State { acked: 5, next_seq: 9, dropped_total: 2, corrupt_total: 1 };
        let b = s.encode();
        assert_eq!(State::decode(&b), Some(s));
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 1;
            assert_eq!(State::decode(&c), None);
        }
        assert_eq!(State::decode(&b[..10]), None);
        assert_eq!(State::decode(&[]), None);
    }
}
