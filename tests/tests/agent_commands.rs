//! The controller asks a node's agent to restart a service, over the agent's own stream, and a
//! real local process is restarted; services the node did not allow are refused.

use anyhow::Result;
use controller::act::ActError;
use controller::act::agent::restart_service;
use controller::ingest::nodes::NodeTable;
use controller::ingest::writer::{Writer, WriterOptions};
use controller::ingest::{IngestOptions, IngestService};
use controller::store::Store;
use controller::store::embedded::EmbeddedStore;
use controller::telemetry::Metrics;
use medic_tests::*;
use std::sync::Arc;
use std::time::Duration;

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_command_restarts_a_real_process_and_unlisted_services_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The controller's ingest side, in this process, on a real socket.
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store"))?);
    let metrics = Arc::new(Metrics::new("embedded"));
    let nodes = NodeTable::default();
    let (jobs, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(Writer::new(store, nodes.clone(), metrics.clone(), WriterOptions::default()).run(rx));
    let svc = IngestService::new(jobs, nodes.clone(), metrics, IngestOptions::default()).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The "service": a real process whose pid is kept in a file, and how to restart it.
    let pidfile = dir.path().join("svc.pid");
    let start = format!("sleep 600 > /dev/null 2>&1 & echo $! > {}", pidfile.display());
    std::process::Command::new("sh").arg("-c").arg(&start).status()?;
    let old: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    assert!(alive(old));
    let restart = format!("kill $(cat {p}); {start}", p = pidfile.display());

    let arg = format!("dummy={restart}");
    let _agent = AgentProc::start(
        &format!("http://127.0.0.1:{port}"),
        "n1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "1s", "--service-restart", &arg],
    )
    .await?;
    eventually(Duration::from_secs(10), || async { Ok(nodes.outbound("n1").map(|_| ())) }).await?;

    let msg = restart_service(&nodes, "n1", "dummy", Duration::from_secs(10)).await?;
    assert_eq!(msg, "restarted dummy");
    let new: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    assert_ne!(new, old, "a new process runs");
    eventually(Duration::from_secs(5), || async { Ok((!alive(old)).then_some(())) }).await?;
    assert!(alive(new));

    match restart_service(&nodes, "n1", "sshd", Duration::from_secs(10)).await {
        Err(ActError::Refused(m)) => assert!(m.contains("not restartable here"), "{m}"),
        other => panic!("an unlisted service must be refused: {other:?}"),
    }
    match restart_service(&nodes, "n2", "dummy", Duration::from_secs(1)).await {
        Err(ActError::Unavailable(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("{other:?}"),
    }
    // SAFETY: cleaning up the process this test started.
    unsafe { libc::kill(new, libc::SIGKILL) };
    Ok(())
}
