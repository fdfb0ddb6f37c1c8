//! Prometheus remote write 1.0: `prometheus.WriteRequest` (defined here by hand), protobuf,
//! snappy block format.

use crate::series::{Generator, SeriesDef};
use anyhow::{Context, Result};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Builds one sender's requests. The node's series (with `__name__`, `instance` and `job`
/// labels, sorted) are built once and reused: each request moves the series it has samples for
/// into the WriteRequest and back, so no label string is copied per request.
pub struct RequestBuilder {
    series: Vec<TimeSeries>,
    touched: Vec<usize>,
    request: WriteRequest,
    buf: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl RequestBuilder {
    pub fn new(defs: &[SeriesDef], instance: &str) -> Self {
        let series = defs
            .iter()
            .map(|d| {
                let mut labels: Vec<Label> = d
                    .labels
                    .iter()
                    .map(|(n, v)| Label { name: n.clone(), value: v.clone() })
                    .chain([
                        Label { name: "__name__".into(), value: d.metric.clone() },
                        Label { name: "instance".into(), value: instance.into() },
                        Label { name: "job".into(), value: "node".into() },
                    ])
                    .collect();
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                TimeSeries { labels, samples: Vec::new() }
            })
            .collect();
        Self {
            series,
            touched: Vec::new(),
            request: WriteRequest::default(),
            buf: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// The snappy-compressed WriteRequest body with the next `n` samples of `generator`.
    pub fn build(&mut self, defs: &[SeriesDef], generator: &mut Generator, n: usize) -> Result<Vec<u8>> {
        let (series, touched) = (&mut self.series, &mut self.touched);
        generator.next_samples(defs, n, |i, ts, v| {
            let s = &mut series[i];
            if s.samples.is_empty() {
                touched.push(i);
            }
            s.samples.push(Sample { value: v, timestamp: ts });
        });
        self.request.timeseries.extend(self.touched.iter().map(|&i| std::mem::take(&mut self.series[i])));
        self.buf.clear();
        let encoded = self.request.encode(&mut self.buf);
        for (mut ts, &i) in self.request.timeseries.drain(..).zip(&self.touched) {
            ts.samples.clear();
            self.series[i] = ts;
        }
        self.touched.clear();
        encoded.context("encoding a WriteRequest")?;
        self.snappy.compress_vec(&self.buf).context("snappy-compressing a WriteRequest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::node_series;

    #[test]
    fn requests_decode_with_sorted_labels_and_all_samples() {
        let defs = node_series(250);
        let mut b = RequestBuilder::new(&defs, "node-007");
        let mut g = Generator::new(defs.len(), 7);
        let mut last_ts = std::collections::HashMap::new();
        for _ in 0..3 {
            let body = b.build(&defs, &mut g, 300).unwrap();
            let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            let req = WriteRequest::decode(raw.as_slice()).unwrap();
            let n: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
            assert_eq!(n, 300);
            for t in &req.timeseries {
                assert!(t.labels.windows(2).all(|w| w[0].name < w[1].name), "{:?}", t.labels);
                assert!(t.labels.iter().any(|l| l.name == "__name__"));
                assert!(t.labels.iter().any(|l| l.name == "instance" && l.value == "node-007"));
                let key = format!("{:?}", t.labels);
                for s in &t.samples {
                    if let Some(&p) = last_ts.get(&key) {
                        assert!(s.timestamp > p);
                    }
                    last_ts.insert(key.clone(), s.timestamp);
                }
            }
        }
        assert_eq!(last_ts.len(), 250);
        assert!(b.series.iter().all(|s| s.samples.is_empty() && !s.labels.is_empty()));
    }
}
