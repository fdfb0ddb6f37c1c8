//! Actions the node's agent carries out over its stream (today: restart a service it allows).

use super::ActError;
use crate::ingest::nodes::NodeTable;
use medic_proto::v1::{Command, CommandStatus, Label};
use std::time::Duration;

/// Asks `node`'s agent to restart `service` and waits for the outcome.
pub async fn restart_service(
    nodes: &NodeTable,
    node: &str,
    service: &str,
    timeout: Duration,
) -> Result<String, ActError> {
    let id = uuid::Uuid::new_v4().to_string();
    let cmd = Command {
        id: id.clone(),
        kind: "restart_service".into(),
        args: vec![Label::new("service", service)],
        timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
    };
    let rx = nodes.send_command(node, cmd).map_err(ActError::Unavailable)?;
    // The agent bounds the restart by the same timeout; allow for the round trip on top.
    let r = match tokio::time::timeout(timeout + Duration::from_secs(10), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Err(ActError::Unavailable(format!("{node}'s stream closed before it answered"))),
        Err(_) => return Err(ActError::Unavailable(format!("{node} did not answer within {timeout:?}"))),
    };
    match CommandStatus::try_from(r.status).unwrap_or(CommandStatus::Unspecified) {
        CommandStatus::Succeeded => Ok(r.message),
        CommandStatus::Rejected => Err(ActError::Refused(r.message)),
        _ => Err(ActError::Failed(r.message)),
    }
}
