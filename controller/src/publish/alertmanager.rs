//! The controller's alerts, kept active in Alertmanager by re-sending them before they expire
//! and resolved explicitly (endsAt = now) when their cause is gone.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One alert: its labels identify it (same labels = same alert = same incident downstream).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Posted<'a> {
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "str::is_empty")]
    generator_url: &'a str,
}

struct Tracked {
    alert: Alert,
    starts_ms: i64,
    resolved_ms: Option<i64>,
}

/// Shared handle: rules and the remediation loop fire and resolve; a task delivers.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Mutex<HashMap<String, Tracked>>>,
    urls: Vec<String>,
    resend: Duration,
    generator_url: String,
}

fn key(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\u{1f}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default()
}

impl Alerts {
    /// `urls`: Alertmanager base URLs (each gets every alert, as Prometheus does); empty: alerts
    /// are only logged.
    pub fn new(urls: Vec<String>, resend: Duration, generator_url: String) -> Self {
        Self { inner: Arc::default(), urls, resend, generator_url }
    }

    pub fn fire(&self, alert: Alert) {
        let k = key(&alert.labels);
        if let Ok(mut m) = self.inner.lock() {
            let e =
                m.entry(k).or_insert_with(|| Tracked { alert: alert.clone(), starts_ms: now_ms(), resolved_ms: None });
            if e.resolved_ms.is_some() {
                e.starts_ms = now_ms();
            }
            e.alert = alert;
            e.resolved_ms = None;
        }
    }

    /// Resolves every active alert whose labels include all of `matching`.
    pub fn resolve(&self, matching: &BTreeMap<String, String>) {
        if let Ok(mut m) = self.inner.lock() {
            for t in m.values_mut() {
                if t.resolved_ms.is_none() && matching.iter().all(|(k, v)| t.alert.labels.get(k) == Some(v)) {
                    t.resolved_ms = Some(now_ms());
                }
            }
        }
    }

    /// Drops every alert without resolving it (a controller that stopped leading: the new
    /// leader raises what is still true, and what it does not expires at its end time).
    pub fn forget_all(&self) {
        if let Ok(mut m) = self.inner.lock() {
            m.clear();
        }
    }

    pub fn active(&self) -> Vec<Alert> {
        self.inner
            .lock()
            .map(|m| m.values().filter(|t| t.resolved_ms.is_none()).map(|t| t.alert.clone()).collect())
            .unwrap_or_default()
    }

    /// Sends everything now: active alerts with an end a few intervals ahead (so they expire on
    /// their own if the controller dies), resolved ones with their end time, and forgets
    /// resolved ones once delivered.
    pub async fn deliver(&self, http: &reqwest::Client) {
        let now = now_ms();
        let ahead = now + 4 * self.resend.as_millis() as i64;
        let (body, delivered_resolved): (Vec<serde_json::Value>, Vec<String>) = {
            let Ok(m) = self.inner.lock() else { return };
            let mut out = Vec::new();
            let mut done = Vec::new();
            for (k, t) in m.iter() {
                let p = Posted {
                    labels: &t.alert.labels,
                    annotations: &t.alert.annotations,
                    starts_at: rfc3339(t.starts_ms),
                    ends_at: rfc3339(t.resolved_ms.unwrap_or(ahead)),
                    generator_url: &self.generator_url,
                };
                if let Ok(v) = serde_json::to_value(&p) {
                    out.push(v);
                }
                if t.resolved_ms.is_some() {
                    done.push(k.clone());
                }
            }
            (out, done)
        };
        if body.is_empty() {
            return;
        }
        let mut ok = self.urls.is_empty();
        for url in &self.urls {
            let sent = http
                .post(format!("{}/api/v2/alerts", url.trim_end_matches('/')))
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            match sent {
                Ok(_) => ok = true,
                Err(e) => tracing::warn!(alertmanager = %url, error = %e, "cannot post alerts; will retry"),
            }
        }
        if ok && let Ok(mut m) = self.inner.lock() {
            for k in delivered_resolved {
                if m.get(&k).is_some_and(|t| t.resolved_ms.is_some()) {
                    m.remove(&k);
                }
            }
        }
    }

    /// Delivers on Alertmanager's schedule until dropped.
    pub async fn run(self) {
        let http = reqwest::Client::new();
        let mut tick = tokio::time::interval(self.resend.min(Duration::from_secs(60)).max(Duration::from_millis(200)));
        loop {
            tick.tick().await;
            self.deliver(&http).await;
        }
    }
}
