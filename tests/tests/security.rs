//! Security end to end, with real processes over real sockets: TLS between agentd and the
//! controller, client certificates and per-agent tokens that bind an agent to its node, the
//! token that guards the mutating API, and secrets that never reach a log. Certificates are made
//! at test time (rcgen, ring).

use anyhow::{Result, bail};
use medic_tests::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A test CA that writes certificates and keys as PEM files.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("Medic test CA {name}"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem())?;
        Ok(Self { issuer: Issuer::new(params, key), dir: dir.to_path_buf(), name: name.to_string() })
    }

    fn ca_file(&self) -> String {
        self.dir.join(format!("{}-ca.pem", self.name)).to_string_lossy().to_string()
    }

    /// A leaf certificate for `names` (DNS names or IPs); returns (cert file, key file).
    fn issue(&self, file: &str, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Result<(String, String)> {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c.to_string_lossy().to_string(), k.to_string_lossy().to_string()))
    }

    fn server(&self, file: &str, names: &[&str]) -> Result<(String, String)> {
        self.issue(file, names, names.first().copied().unwrap_or("controller"), ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, node: &str) -> Result<(String, String)> {
        self.issue(&format!("{}-{node}", self.name), &[node], node, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn tls_url(c: &ControllerProc) -> String {
    format!("https://127.0.0.1:{}", c.grpc)
}

async fn refused(c: &ControllerProc, reason: &str) -> Result<f64> {
    let m = scrape(&c.url("/metrics")).await?;
    Ok(m.get(&format!("medic_agents_refused_total{{reason=\"{reason}\"}}")).copied().unwrap_or(0.0))
}

async fn wait_refused(c: &ControllerProc, reason: &str) -> Result<()> {
    eventually(Duration::from_secs(20), || async {
        let n = refused(c, reason).await?;
        if n >= 1.0 { Ok(Some(())) } else { bail!("no refusal counted with reason {reason}") }
    })
    .await
}

/// The agent's own log, where it says why it could not connect.
fn agent_log(dir: &Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{node}.out"))).unwrap_or_default()
}

async fn stored_batches(c: &ControllerProc, node: &str) -> Result<u64> {
    Ok(c.nodes().await?.get(node).and_then(|n| n["batches"].as_u64()).unwrap_or(0))
}

/// Waits until `agent` has delivered `more` batches beyond `since`: the controller still serves it.
async fn keeps_streaming(c: &ControllerProc, node: &str, since: u64, more: u64) -> Result<()> {
    eventually(Duration::from_secs(20), || async {
        let n = stored_batches(c, node).await?;
        if n >= since + more { Ok(Some(())) } else { bail!("{node}: {n} batches stored, want {}", since + more) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_with_a_certificate_for_their_own_node_stream_and_the_valid_one_keeps_streaming() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ca = Ca::new(&certs, "medic")?;
    let other_ca = Ca::new(&certs, "other")?;
    // The controller's certificate names a service name, not the address the agents dial:
    // --tls-server-name says which name to check.
    let (cert, key) = ca.server("controller", &["controller.medic.test"])?;
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca.ca_file()],
    )
    .await?;
    let agents = dir.path().join("agents");
    let tls = |cert: &str, key: &str| -> Vec<String> {
        ["--tls-ca", &ca.ca_file(), "--tls-server-name", "controller.medic.test", "--tls-cert", cert, "--tls-key", key]
            .iter()
            .map(|s| s.to_string())
            .chain(["--interval".to_string(), "300ms".to_string()])
            .collect()
    };
    let (a_cert, a_key) = ca.client("node-a")?;
    let args = tls(&a_cert, &a_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = AgentProc::start(&tls_url(&c), "node-a", &agents.join("a"), free_port(), &args).await?;
    let node = drained(&a, &c).await?;
    assert!(node["batches"].as_u64().unwrap_or(0) >= 1, "the agent's data is stored: {node}");
    let m = a.metrics().await?;
    assert_eq!(m.get("medic_agent_connected").copied(), Some(1.0));
    let before = stored_batches(&c, "node-a").await?;

    // No certificate at all.
    let no_cert = ["--tls-ca", &ca.ca_file(), "--tls-server-name", "controller.medic.test", "--interval", "300ms"];
    let _b = AgentProc::start(&tls_url(&c), "node-b", &agents.join("b"), free_port(), &no_cert).await?;
    wait_refused(&c, "no_credentials").await?;
    // A certificate for node-c from a CA the controller does not trust.
    let (c_cert, c_key) = other_ca.client("node-c")?;
    let args = tls(&c_cert, &c_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _c = AgentProc::start(&tls_url(&c), "node-c", &agents.join("c"), free_port(), &args).await?;
    wait_refused(&c, "tls_handshake").await?;
    // node-a's (valid) certificate, used to claim node-d.
    let args = tls(&a_cert, &a_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _d = AgentProc::start(&tls_url(&c), "node-d", &agents.join("d"), free_port(), &args).await?;
    wait_refused(&c, "identity_mismatch").await?;

    keeps_streaming(&c, "node-a", before, 3).await?;
    let nodes = c.nodes().await?;
    for impostor in ["node-b", "node-c", "node-d"] {
        assert!(!nodes.contains_key(impostor), "{impostor} must not be known to the controller: {nodes:?}");
    }
    let b_log = agent_log(&agents, "node-b");
    assert!(
        b_log.contains("Unauthenticated") && b_log.contains("requires a client certificate"),
        "the agent without a certificate is told what is missing:\n{b_log}"
    );
    let d_log = agent_log(&agents, "node-d");
    assert!(
        d_log.contains("PermissionDenied") && d_log.contains("not to node \"node-d\""),
        "the agent claiming another node is told why:\n{d_log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_does_not_trust_a_controller_whose_certificate_comes_from_an_unknown_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ca = Ca::new(&certs, "medic")?;
    let rogue = Ca::new(&certs, "rogue")?;
    let (cert, key) = rogue.server("rogue-controller", &["127.0.0.1"])?;
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--tls-cert", &cert, "--tls-key", &key],
    )
    .await?;
    let agents = dir.path().join("agents");
    let a = AgentProc::start(
        &tls_url(&c),
        "node-a",
        &agents.join("a"),
        free_port(),
        &["--tls-ca", &ca.ca_file(), "--interval", "300ms"],
    )
    .await?;
    eventually(Duration::from_secs(20), || async {
        let log = agent_log(&agents, "node-a");
        if log.contains("UnknownIssuer") { Ok(Some(())) } else { bail!("no certificate error logged yet:\n{log}") }
    })
    .await?;
    assert_eq!(a.metrics().await?.get("medic_agent_connected").copied(), Some(0.0));
    assert!(!c.nodes().await?.contains_key("node-a"), "nothing was sent to the untrusted controller");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_with_their_own_nodes_token_stream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ca = Ca::new(&certs, "medic")?;
    let (cert, key) = ca.server("controller", &["127.0.0.1"])?;
    let tokens = dir.path().join("agent-tokens");
    std::fs::write(
        &tokens,
        "# node   token\nnode-a  token-of-node-a-7f3b9c2d1e\nnode-b  token-of-node-b-0a9e8d7c6b\n",
    )?;
    let t = tokens.to_string_lossy().to_string();
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--tls-cert", &cert, "--tls-key", &key, "--agent-tokens-file", &t],
    )
    .await?;
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents)?;
    let token_file = |name: &str, token: &str| -> Result<String> {
        let p = agents.join(name);
        std::fs::write(&p, format!("{token}\n"))?;
        Ok(p.to_string_lossy().to_string())
    };
    let ca_file = ca.ca_file();
    let base = ["--tls-ca", ca_file.as_str(), "--interval", "300ms"];
    let with_token = |f: &str| -> Vec<String> {
        base.iter().map(|s| s.to_string()).chain(["--token-file".to_string(), f.to_string()]).collect()
    };
    let ta = token_file("a.token", "token-of-node-a-7f3b9c2d1e")?;
    let args = with_token(&ta);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = AgentProc::start(&tls_url(&c), "node-a", &agents.join("a"), free_port(), &args).await?;
    drained(&a, &c).await?;
    let before = stored_batches(&c, "node-a").await?;

    let _missing = AgentProc::start(&tls_url(&c), "node-m", &agents.join("m"), free_port(), &base).await?;
    wait_refused(&c, "no_credentials").await?;
    let wrong = token_file("w.token", "not-a-token-anyone-issued")?;
    let args = with_token(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _wrong = AgentProc::start(&tls_url(&c), "node-w", &agents.join("w"), free_port(), &args).await?;
    wait_refused(&c, "invalid_token").await?;
    // node-a's token, used by an agent that says it is node-b.
    let args = with_token(&ta);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _stolen = AgentProc::start(&tls_url(&c), "node-b", &agents.join("b"), free_port(), &args).await?;
    wait_refused(&c, "token_for_other_node").await?;

    keeps_streaming(&c, "node-a", before, 3).await?;
    let nodes = c.nodes().await?;
    for impostor in ["node-m", "node-w", "node-b"] {
        assert!(!nodes.contains_key(impostor), "{impostor} must not be known to the controller: {nodes:?}");
    }
    let log = agent_log(&agents, "node-b");
    assert!(log.contains("PermissionDenied") && log.contains("belongs to node"), "{log}");
    Ok(())
}

/// Writes a rule that asks for approval as soon as any node reports.
fn approval_rule(dir: &Path) -> Result<String> {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: needs-a-human
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - notify: { severity: info }
    guards: { approval: { expires_after: 1h } }
    verify: { clears_within: 1h }
",
    )?;
    Ok(rules.to_string_lossy().to_string())
}

async fn waiting_action(c: &ControllerProc) -> Result<String> {
    eventually(Duration::from_secs(30), || async {
        let a: Vec<serde_json::Value> = get_json(&c.url("/api/v1/actions?rule=needs-a-human")).await?;
        match a.iter().find(|e| e["outcome"] == "awaiting_approval") {
            Some(e) => Ok(Some(e["action_id"].as_str().unwrap_or_default().to_string())),
            None => bail!("nothing awaits approval yet: {a:?}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_an_action_needs_the_api_token_while_reading_stays_open() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = approval_rule(dir.path())?;
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, "api-token-5d41402abc4b2a76b9719d911017c592\n")?;
    let tf = token_file.to_string_lossy().to_string();
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--rules-dir", &rules, "--remediation-interval", "500ms", "--api-token-file", &tf],
    )
    .await?;
    let _agent =
        AgentProc::start(&c.grpc_url(), "n1", &dir.path().join("spool"), free_port(), &["--interval", "500ms"]).await?;
    let id = waiting_action(&c).await?;

    let approve = c.url(&format!("/api/v1/actions/{id}/approve"));
    let r = client().post(&approve).send().await?;
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let r = client().post(&approve).bearer_auth("api-token-wrong-wrong-wrong-wrong").send().await?;
    assert_eq!(r.status(), 403, "a wrong token");
    let out = std::process::Command::new(bin("controller")?)
        .args(["actions", "approve", &id, "--api", &c.url("")])
        .env_remove("MEDIC_API_TOKEN")
        .output()?;
    assert!(!out.status.success(), "the CLI without a token is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let a: Vec<serde_json::Value> = get_json(&c.url("/api/v1/actions?rule=needs-a-human")).await?;
    assert!(a.iter().all(|e| e["outcome"] != "approved"), "refused calls approve nothing: {a:?}");

    let out = std::process::Command::new(bin("controller")?)
        .args(["actions", "approve", &id, "--api", &c.url(""), "--api-token-file", &tf])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(20), || async {
        let a: Vec<serde_json::Value> = get_json(&c.url("/api/v1/actions?rule=needs-a-human")).await?;
        if a.iter().any(|e| e["outcome"] == "acted") { Ok(Some(())) } else { bail!("not acted yet: {a:?}") }
    })
    .await?;
    // The env variable works as well (nothing waits any more: 404 proves the token was accepted).
    let out = std::process::Command::new(bin("controller")?)
        .args(["actions", "approve", &id, "--api", &c.url("")])
        .env("MEDIC_API_TOKEN", "api-token-5d41402abc4b2a76b9719d911017c592")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{err}");
    for path in ["/api/v1/actions", "/api/v1/nodes", "/api/v1/rules", "/healthz", "/metrics"] {
        let r = client().get(c.url(path)).send().await?;
        assert!(r.status().is_success(), "GET {path} stays open: {}", r.status());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keys_and_passwords_never_appear_in_the_logs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ca = Ca::new(&certs, "medic")?;
    let (cert, key) = ca.server("controller", &["127.0.0.1"])?;
    let (a_cert, a_key) = ca.client("n1")?;
    let secrets = [
        "agent-token-b1946ac92492d2347c6235b4d2611184",
        "api-token-6f1ed002ab5595859014ebf0951522d9",
        "ch-password-e99a18c428cb38d5f260853678922e03",
        "wrong-token-0cc175b9c0f1b6a831c399e269772661",
    ];
    let write = |name: &str, text: &str| -> Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_string_lossy().to_string())
    };
    let tokens = write("agent-tokens", &format!("n1 {}\n", secrets[0]))?;
    let agent_token = write("agent.token", &format!("{}\n", secrets[0]))?;
    let api_token = write("api-token", &format!("{}\n", secrets[1]))?;
    let password = write("ch-password", &format!("{}\n", secrets[2]))?;
    let rules = approval_rule(dir.path())?;
    let log_file = dir.path().join("controller.json");
    let lf = log_file.to_string_lossy().to_string();
    // A ClickHouse that is not there: the agent's collector and the controller's executor fail,
    // and their errors are logged — without the password they were configured with.
    let dead_clickhouse = format!("http://127.0.0.1:{}", free_port());
    // SAFETY: set before any process is spawned; the test's own threads do not read it.
    unsafe { std::env::set_var("MEDIC_CLICKHOUSE_PASSWORD", secrets[2]) };
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca.ca_file(),
            "--agent-tokens-file",
            &tokens,
            "--api-token-file",
            &api_token,
            "--rules-dir",
            &rules,
            "--remediation-interval",
            "500ms",
            "--clickhouse-node-url",
            &format!("{dead_clickhouse}/{{node}}"),
            "--log-level",
            "debug",
            "--log-file",
            &lf,
        ],
    )
    .await?;
    unsafe { std::env::remove_var("MEDIC_CLICKHOUSE_PASSWORD") };
    let agents = dir.path().join("agents");
    let ca_file = ca.ca_file();
    let mut cmd_args = vec![
        "--tls-ca",
        ca_file.as_str(),
        "--tls-cert",
        a_cert.as_str(),
        "--tls-key",
        a_key.as_str(),
        "--token-file",
        agent_token.as_str(),
        "--clickhouse-url",
        dead_clickhouse.as_str(),
        "--clickhouse-password-file",
        password.as_str(),
        "--interval",
        "300ms",
        "--log-level",
        "debug",
    ];
    let a = AgentProc::start(&tls_url(&c), "n1", &agents.join("a"), free_port(), &cmd_args).await?;
    drained(&a, &c).await?;
    // An impostor with a wrong token, and API calls with a wrong and the right token.
    let wrong = write("wrong.token", secrets[3])?;
    cmd_args.truncate(2);
    cmd_args.extend(["--token-file", wrong.as_str(), "--interval", "300ms", "--log-level", "debug"]);
    let _w = AgentProc::start(&tls_url(&c), "n2", &agents.join("w"), free_port(), &cmd_args).await?;
    wait_refused(&c, "invalid_token").await?;
    let id = waiting_action(&c).await?;
    let approve = c.url(&format!("/api/v1/actions/{id}/approve"));
    assert_eq!(client().post(&approve).bearer_auth(secrets[3]).send().await?.status(), 403);
    assert!(client().post(&approve).bearer_auth(secrets[1]).send().await?.status().is_success());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut logs = vec![
        ("controller stderr", std::fs::read_to_string(dir.path().join("c/controller.out"))?),
        ("controller log file", std::fs::read_to_string(&log_file)?),
    ];
    for node in ["n1", "n2"] {
        logs.push(("agent", agent_log(&agents, node)));
    }
    let key_pem = std::fs::read_to_string(&key)?;
    let key_body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, text) in &logs {
        assert!(text.len() > 1000, "{what} logged too little to prove anything:\n{text}");
        for s in secrets.iter().map(|s| s.to_string()).chain([key_body[..32].to_string()]) {
            assert!(!text.contains(&s), "{what} contains a secret ({}…)", &s[..8]);
        }
    }
    // The failures that were logged are there, only without the secrets.
    let all: String = logs.iter().map(|(_, t)| t.as_str()).collect();
    assert!(all.contains("invalid_token") && all.contains("the API token is wrong"), "refusals are logged");
    Ok(())
}
