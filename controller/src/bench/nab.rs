//! NAB: run the production anomaly detector over Numenta Anomaly Benchmark CSVs.
//!
//! Each `DATA/<category>/<file>.csv` (`timestamp,value`) is streamed through a fresh
//! [`SeriesDetector`] with the default [`Config`] — the same settings for every file; the
//! sampling interval is inferred by the detector — and `OUT/<category>/<file>.csv`
//! (`timestamp,anomaly_score`) is written for NAB's scorer.

use crate::detect::anomaly::{Config, Kind, SeriesDetector};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum NabError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Parse { path: PathBuf, line: usize, msg: String },
    #[error("{0}: no NAB CSV files found")]
    Empty(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NabError + '_ {
    move |source| NabError::Io { path: path.to_path_buf(), source }
}

/// One parsed row: the timestamp text (echoed back verbatim), its time in ms, the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub stamp: String,
    pub ts_ms: i64,
    pub value: f64,
}

pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

/// Parse a NAB CSV; errors name the file and line.
pub fn read_csv(path: &Path) -> Result<Vec<Row>, NabError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let perr = |line: usize, msg: String| NabError::Parse { path: path.to_path_buf(), line, msg };
    let mut rows = Vec::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim().starts_with("timestamp") => {}
        Some((_, h)) => return Err(perr(1, format!("expected header `timestamp,value`, got {h:?}"))),
        None => return Err(perr(1, "empty file".into())),
    }
    for (i, line) in lines {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (stamp, value) =
            line.split_once(',').ok_or_else(|| perr(line_no, format!("expected `timestamp,value`, got {line:?}")))?;
        let ts_ms = parse_timestamp(stamp).ok_or_else(|| perr(line_no, format!("bad timestamp {stamp:?}")))?;
        let value: f64 = value.trim().parse().map_err(|e| perr(line_no, format!("bad value {value:?}: {e}")))?;
        rows.push(Row { stamp: stamp.trim().to_string(), ts_ms, value });
    }
    Ok(rows)
}

/// Score rows with a fresh production detector.
pub fn score_rows(rows: &[Row], cfg: Config) -> Vec<f64> {
    let mut det = SeriesDetector::new(Arc::new(cfg));
    rows.iter().map(|r| det.observe(r.ts_ms, r.value, Kind::Gauge).value).collect()
}

/// Relative paths (`category/file.csv`) of the files to score.
fn list_files(data: &Path, files: Option<&Path>) -> Result<Vec<PathBuf>, NabError> {
    if let Some(list) = files {
        let text = std::fs::read_to_string(list).map_err(io(list))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(PathBuf::from)
            .collect());
    }
    let mut out = Vec::new();
    for cat in std::fs::read_dir(data).map_err(io(data))? {
        let cat = cat.map_err(io(data))?.path();
        if !cat.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&cat).map_err(io(&cat))? {
            let f = f.map_err(io(&cat))?.path();
            if f.extension().is_some_and(|e| e == "csv")
                && let Ok(rel) = f.strip_prefix(data)
            {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Score every file; returns (files, rows) written.
pub fn run(data: &Path, out: &Path, files: Option<&Path>) -> Result<(usize, usize), NabError> {
    let list = list_files(data, files)?;
    if list.is_empty() {
        return Err(NabError::Empty(data.to_path_buf()));
    }
    let mut rows_total = 0;
    for rel in &list {
        let src = data.join(rel);
        let rows = read_csv(&src)?;
        let scores = score_rows(&rows, Config::default());
        let dst = out.join(rel);
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut text = String::with_capacity(rows.len() * 32);
        text.push_str("timestamp,anomaly_score\n");
        for (r, s) in rows.iter().zip(&scores) {
            // Four decimals: plenty for thresholds, and keeps NAB's threshold sweep short.
            let _ = writeln!(text, "{},{:.4}", r.stamp, s.clamp(0.0, 1.0));
        }
        std::fs::write(&dst, text).map_err(io(&dst))?;
        rows_total += rows.len();
    }
    Ok((list.len(), rows_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_are_reported_with_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,abc\n").expect("write");
        let e = read_csv(&p).expect_err("must fail").to_string();
        assert!(e.contains("x.csv:3") && e.contains("abc"), "{e}");
        std::fs::write(&p, "timestamp,value\nyesterday,1\n").expect("write");
        assert!(read_csv(&p).expect_err("must fail").to_string().contains(":2: bad timestamp"));
    }

    #[test]
    fn timestamps_parse_with_and_without_fractions() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.500000"), Some(1500));
        assert_eq!(parse_timestamp("nope"), None);
    }
}
