//! Rule files on a running controller: hot reload through file changes and SIGHUP, an invalid
//! set never replacing a good one, and `controller rules check` as an offline gate.

use anyhow::Result;
use medic_tests::*;
use std::time::Duration;

const GOOD: &str = "rules:
  - name: readonly-replica
    when:
      threshold: { metric: clickhouse_replica_is_readonly, op: \">\", value: 0 }
      for: 1m
    do:
      - restart: { how: replica }
";

async fn reload_state(c: &ControllerProc) -> Result<(f64, serde_json::Value)> {
    let m = scrape(&c.url("/metrics")).await?;
    let rules: serde_json::Value = get_json(&c.url("/api/v1/rules")).await?;
    Ok((m.get("medic_rules_last_reload_success").copied().unwrap_or(-1.0), rules))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_is_rejected_and_sighup_reloads_the_fixed_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("clickhouse.yaml"), GOOD)?;
    let rules_arg = rules.to_string_lossy().to_string();
    let c =
        ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &["--rules-dir", &rules_arg]).await?;
    let (ok, listed) = reload_state(&c).await?;
    assert_eq!(ok, 1.0);
    assert_eq!(listed["rules"][0]["name"], "readonly-replica");

    std::fs::write(rules.join("clickhouse.yaml"), GOOD.replace("value: 0", "value: zero"))?;
    let listed = eventually(Duration::from_secs(10), || async {
        let (ok, listed) = reload_state(&c).await?;
        Ok((ok == 0.0).then_some(listed))
    })
    .await?;
    assert_eq!(listed["rules"][0]["name"], "readonly-replica", "the last good set stays active");
    let err = listed["errors"][0].as_str().unwrap_or_default();
    assert!(err.contains("clickhouse.yaml:4:") && err.contains("invalid type"), "{err}");

    // Fixed while nobody watches the file (written atomically elsewhere, then moved), and a
    // SIGHUP asks for the reload.
    let tmp = dir.path().join("staged.yaml");
    std::fs::write(&tmp, GOOD.replace("readonly-replica", "readonly-replica-v2"))?;
    std::fs::rename(&tmp, rules.join("clickhouse.yaml"))?;
    c.proc.stop_signal(libc::SIGHUP);
    let listed = eventually(Duration::from_secs(10), || async {
        let (ok, listed) = reload_state(&c).await?;
        Ok((ok == 1.0 && listed["rules"][0]["name"] == "readonly-replica-v2").then_some(listed))
    })
    .await?;
    assert_eq!(listed["errors"].as_array().map(Vec::len), Some(0));
    let m = scrape(&c.url("/metrics")).await?;
    assert!(m.get("medic_rules_reload_total{result=\"error\"}").copied().unwrap_or(0.0) >= 1.0);
    assert!(m.get("medic_rules_reload_total{result=\"success\"}").copied().unwrap_or(0.0) >= 2.0);
    Ok(())
}

#[test]
fn rules_check_exits_1_with_file_line_column() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a.yaml"), GOOD.replace("op: \">\"", "op: \"=>\""))?;
    let out = std::process::Command::new(bin("controller")?).args(["rules", "check"]).arg(dir.path()).output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a.yaml:4:") && stderr.contains("unknown variant `=>`"), "{stderr}");
    std::fs::write(dir.path().join("a.yaml"), GOOD)?;
    let out = std::process::Command::new(bin("controller")?).args(["rules", "check"]).arg(dir.path()).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
