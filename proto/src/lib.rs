//! The Medic wire protocol: generated types and gRPC client/server for `medic.v1`.

pub mod codec;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("medic.v1");
}

/// The protocol version this build speaks. Bump on any incompatible change to `medic.v1`.
/// 2: batches carry `series` (a controller of version 1 would silently drop them).
pub const PROTOCOL_VERSION: u32 = 2;

/// Oldest agent protocol version the controller still accepts.
pub const MIN_SUPPORTED_PROTOCOL_VERSION: u32 = 1;

impl v1::Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: value.into() }
    }
}

/// One series of a batch as consumers read it, whichever form it came in: a version-1 sample is
/// a series of one point.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'a> {
    pub metric: &'a str,
    pub labels: &'a [v1::Label],
    pub kind: i32,
    pub timestamps_ms: &'a [i64],
    pub values: &'a [f64],
}

impl<'a> SeriesRef<'a> {
    /// (timestamp_ms, value) pairs.
    pub fn points(self) -> impl Iterator<Item = (i64, f64)> + 'a {
        self.timestamps_ms.iter().copied().zip(self.values.iter().copied())
    }
}

impl v1::Batch {
    /// Every series of the batch, the version-1 samples first.
    pub fn series_refs(&self) -> impl Iterator<Item = SeriesRef<'_>> {
        let samples = self.samples.iter().map(|s| SeriesRef {
            metric: &s.metric,
            labels: &s.labels,
            kind: s.kind,
            timestamps_ms: std::slice::from_ref(&s.timestamp_ms),
            values: std::slice::from_ref(&s.value),
        });
        let series = self.series.iter().map(|s| SeriesRef {
            metric: &s.metric,
            labels: &s.labels,
            kind: s.kind,
            timestamps_ms: &s.timestamps_ms,
            values: &s.values,
        });
        samples.chain(series)
    }

    /// Number of points (samples) in the batch, in both forms.
    pub fn sample_count(&self) -> usize {
        self.samples.len() + self.series.iter().map(|s| s.timestamps_ms.len().min(s.values.len())).sum::<usize>()
    }

    /// Groups samples by series into `series` (the version-2 form), keeping first-seen order.
    pub fn group_samples(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut index: std::collections::HashMap<(String, Vec<v1::Label>), usize> = std::collections::HashMap::new();
        for s in std::mem::take(&mut self.samples) {
            let v1::Sample { metric, labels, timestamp_ms, value, kind } = s;
            let at = match index.get(&(metric.clone(), labels.clone())) {
                Some(&i) => i,
                None => {
                    self.series.push(v1::Series {
                        metric: metric.clone(),
                        labels: labels.clone(),
                        kind,
                        timestamps_ms: Vec::new(),
                        values: Vec::new(),
                    });
                    index.insert((metric, labels), self.series.len() - 1);
                    self.series.len() - 1
                }
            };
            self.series[at].timestamps_ms.push(timestamp_ms);
            self.series[at].values.push(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{Batch, Label, Sample};

    fn sample(metric: &str, cpu: &str, ts: i64, v: f64) -> Sample {
        Sample { metric: metric.into(), labels: vec![Label::new("cpu", cpu)], timestamp_ms: ts, value: v, kind: 1 }
    }

    #[test]
    fn grouping_keeps_every_point_once_per_series_in_order() {
        let mut b = Batch {
            samples: vec![sample("m", "0", 1, 1.0), sample("m", "1", 1, 2.0), sample("m", "0", 2, 3.0)],
            ..Default::default()
        };
        b.group_samples();
        assert!(b.samples.is_empty());
        assert_eq!(b.series.len(), 2);
        assert_eq!((b.series[0].timestamps_ms.clone(), b.series[0].values.clone()), (vec![1, 2], vec![1.0, 3.0]));
        assert_eq!(b.sample_count(), 3);
        let points: Vec<(String, i64, f64)> = b
            .series_refs()
            .flat_map(|s| {
                let cpu = s.labels[0].value.clone();
                s.points().map(move |(t, v)| (cpu.clone(), t, v))
            })
            .collect();
        assert_eq!(points, [("0".into(), 1, 1.0), ("0".into(), 2, 3.0), ("1".into(), 1, 2.0)]);
    }

    #[test]
    fn version_one_samples_read_as_one_point_series() {
        let b = Batch { samples: vec![sample("m", "0", 5, 7.0)], ..Default::default() };
        let s: Vec<_> = b.series_refs().collect();
        assert_eq!((s.len(), s[0].metric, s[0].timestamps_ms, s[0].values), (1, "m", &[5i64][..], &[7.0][..]));
    }
}
