//! Publish: what Medic knows reaches people. `alertmanager` posts the controller's own alerts
//! (escalations, approvals waiting, notify steps) to Alertmanager's API v2, re-sends them while
//! active and resolves them when their condition clears.

pub mod alertmanager;
