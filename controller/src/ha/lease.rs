//! One Kubernetes Lease (coordination.k8s.io/v1), read and written with optimistic concurrency:
//! every update carries the resourceVersion that was read, so of two replicas racing for the
//! same lease the API server lets exactly one write through and answers the other 409 Conflict.
//!
//! The rules are client-go's: a lease is free when it has no holder or its holder has not renewed
//! it within `leaseDurationSeconds`; the holder renews by writing `renewTime`; taking over counts
//! a transition.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// Annotations a holder publishes on the lease (how followers reach the leader).
pub type Annotations = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica (the pod name, else the hostname).
    pub identity: String,
    /// How long the lease is valid after the holder's last renewal.
    pub duration: Duration,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// We hold it (acquired now, or renewed).
    Held { acquired: bool },
    /// Another replica holds it and renewed it recently.
    HeldByOther { holder: String, annotations: Annotations },
    /// Someone wrote the lease between our read and our write; try again.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the Kubernetes API refused access to lease {namespace}/{name}: {message} (the controller's ServiceAccount needs get, create and update on leases.coordination.k8s.io in its namespace)"
    )]
    Forbidden { namespace: String, name: String, message: String },
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn micro(ms: i64) -> Option<MicroTime> {
    Timestamp::from_millisecond(ms).ok().map(MicroTime)
}

fn ms(t: &MicroTime) -> i64 {
    t.0.as_millisecond()
}

/// Whether `lease` is taken by someone other than `identity` at `now_ms`.
pub fn held_by_other(lease: &Lease, identity: &str, now_ms: i64) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == identity {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(ms)?;
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)) * 1000;
    (renewed + duration_ms > now_ms).then(|| holder.to_string())
}

pub struct LeaseClient {
    api: Api<Lease>,
    settings: LeaseSettings,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseClient {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self { api: Api::namespaced(client, &settings.namespace), settings }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn map_err(&self, e: kube::Error) -> LeaseError {
        match e {
            kube::Error::Api(s) if s.code == 403 => LeaseError::Forbidden {
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                message: s.message.clone(),
            },
            other => LeaseError::Api(other),
        }
    }

    fn spec_for_us(&self, now_ms: i64, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.settings.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: if ours { previous.and_then(|p| p.acquire_time.clone()) } else { micro(now_ms) },
            renew_time: micro(now_ms),
            lease_transitions: Some(if ours || previous.is_none() { transitions } else { transitions + 1 }),
            ..previous.cloned().unwrap_or_default()
        }
    }

    /// One attempt to acquire the lease, or to renew it if we hold it.
    pub async fn try_acquire_or_renew(&self, now_ms: i64, annotations: &Annotations) -> Result<Attempt, LeaseError> {
        let name = &self.settings.name;
        let current = self.api.get_opt(name).await.map_err(|e| self.map_err(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    annotations: Some(annotations.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_for_us(now_ms, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held { acquired: true }),
                // Another replica created it first.
                Err(e) if conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(self.map_err(e)),
            };
        };
        if let Some(holder) = held_by_other(&lease, &self.settings.identity, now_ms) {
            let annotations = lease.metadata.annotations.clone().unwrap_or_default();
            return Ok(Attempt::HeldByOther { holder, annotations });
        }
        let acquired =
            lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.settings.identity.as_str());
        lease.spec = Some(self.spec_for_us(now_ms, lease.spec.as_ref()));
        let mut merged = lease.metadata.annotations.take().unwrap_or_default();
        merged.extend(annotations.clone());
        lease.metadata.annotations = Some(merged);
        // `lease` still carries the resourceVersion we read: the API server rejects this write
        // with 409 if anyone wrote in between.
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held { acquired }),
            Err(e) if conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// Gives the lease up (at shutdown) so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let name = &self.settings.name;
        let Some(mut lease) = self.api.get_opt(name).await.map_err(|e| self.map_err(e))? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to release any more.
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(self.map_err(e)),
        }
    }
}
