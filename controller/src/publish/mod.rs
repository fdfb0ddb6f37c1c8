//! Publish: what Medic knows reaches people. `alertmanager` posts the controller's own alerts
//! (escalations, approvals waiting, notify steps) to Alertmanager's API v2, re-sends them while
//! active and resolves them when their condition clears; `unhandled` raises the alerts for what
//! no rule takes care of (a lasting anomaly, a forecast exhaustion).

pub mod alertmanager;
pub mod unhandled;
