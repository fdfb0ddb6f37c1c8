//! Commands from the controller, carried out on this node — the agent's half of the remediation
//! playbooks. Only what the node's operator allowed runs: a restart of a service listed with
//! `--service-restart NAME=COMMAND`, or, with `--allow-systemctl-restart`, `systemctl restart
//! NAME`. Anything else is answered REJECTED; nothing the controller sends is ever run as a shell
//! command of its choosing.

use medic_proto::v1::{Command, CommandResult, CommandStatus};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// Service name → the command line that restarts it (run with `sh -c`).
    pub restart_commands: BTreeMap<String, String>,
    /// Restart other services with `systemctl restart NAME`.
    pub allow_systemctl: bool,
}

pub const RESTART_SERVICE: &str = "restart_service";

fn result(cmd: &Command, status: CommandStatus, message: String) -> CommandResult {
    CommandResult {
        id: cmd.id.clone(),
        status: status as i32,
        message,
        finished_unix_ms: chrono::Utc::now().timestamp_millis(),
    }
}

fn arg<'a>(cmd: &'a Command, name: &str) -> Option<&'a str> {
    cmd.args.iter().find(|a| a.name == name).map(|a| a.value.as_str())
}

/// Runs one command to completion (bounded by its timeout) and says how it went.
pub async fn run(opts: &CommandOptions, cmd: &Command) -> CommandResult {
    if cmd.kind != RESTART_SERVICE {
        return result(cmd, CommandStatus::Rejected, format!("this agent does not run {:?} commands", cmd.kind));
    }
    let Some(service) = arg(cmd, "service") else {
        return result(cmd, CommandStatus::Rejected, "restart_service needs a service argument".into());
    };
    let mut process = if let Some(line) = opts.restart_commands.get(service) {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(line);
        c
    } else if opts.allow_systemctl && service.chars().all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c)) {
        let mut c = tokio::process::Command::new("systemctl");
        c.arg("restart").arg(service);
        c
    } else {
        return result(
            cmd,
            CommandStatus::Rejected,
            format!("service {service:?} is not restartable here (configure --service-restart {service}=COMMAND)"),
        );
    };
    let timeout = Duration::from_millis(if cmd.timeout_ms == 0 { 60_000 } else { cmd.timeout_ms as u64 });
    tracing::info!(command = %cmd.id, service, "restarting a service as asked by the controller");
    process.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = match process.output_with_timeout(timeout).await {
        Ok(out) => out,
        Err(OutputError::Spawn(e)) => {
            return result(cmd, CommandStatus::Failed, format!("cannot start the restart command: {e}"));
        }
        Err(OutputError::Timeout) => {
            return result(cmd, CommandStatus::TimedOut, format!("the restart did not finish within {timeout:?}"));
        }
    };
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect::<String>()
    };
    if out.status.success() {
        result(cmd, CommandStatus::Succeeded, format!("restarted {service}"))
    } else {
        result(
            cmd,
            CommandStatus::Failed,
            format!("restart of {service} exited with {}: {}", out.status, tail(&out.stderr)),
        )
    }
}

enum OutputError {
    Spawn(std::io::Error),
    Timeout,
}

trait OutputWithTimeout {
    async fn output_with_timeout(&mut self, t: Duration) -> Result<std::process::Output, OutputError>;
}

impl OutputWithTimeout for tokio::process::Command {
    async fn output_with_timeout(&mut self, t: Duration) -> Result<std::process::Output, OutputError> {
        match tokio::time::timeout(t, self.output()).await {
            Ok(r) => r.map_err(OutputError::Spawn),
            Err(_) => Err(OutputError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medic_proto::v1::Label;

    fn restart(service: &str) -> Command {
        Command {
            id: "c1".into(),
            kind: RESTART_SERVICE.into(),
            args: vec![Label::new("service", service)],
            timeout_ms: 5_000,
        }
    }

    #[tokio::test]
    async fn only_configured_services_are_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("restarted");
        let opts = CommandOptions {
            restart_commands: [("ch".to_string(), format!("touch {}", marker.display()))].into_iter().collect(),
            allow_systemctl: false,
        };
        let r = run(&opts, &restart("ch")).await;
        assert_eq!(r.status, CommandStatus::Succeeded as i32, "{}", r.message);
        assert!(marker.exists());
        let r = run(&opts, &restart("sshd")).await;
        assert_eq!(r.status, CommandStatus::Rejected as i32);
        let r = run(&opts, &Command { kind: "exec".into(), ..restart("ch") }).await;
        assert_eq!(r.status, CommandStatus::Rejected as i32);
    }

    #[tokio::test]
    async fn a_failing_or_hanging_restart_is_reported_as_such() {
        let opts = CommandOptions {
            restart_commands: [
                ("bad".to_string(), "echo nope >&2; exit 3".to_string()),
                ("slow".to_string(), "sleep 5".to_string()),
            ]
            .into_iter()
            .collect(),
            allow_systemctl: false,
        };
        let r = run(&opts, &restart("bad")).await;
        assert_eq!(r.status, CommandStatus::Failed as i32);
        assert!(r.message.contains("nope"), "{}", r.message);
        let r = run(&opts, &Command { timeout_ms: 200, ..restart("slow") }).await;
        assert_eq!(r.status, CommandStatus::TimedOut as i32);
    }
}
