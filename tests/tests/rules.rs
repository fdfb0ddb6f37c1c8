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

/// (successful, rejected) reloads so far.
async fn reloads(c: &ControllerProc) -> Result<(f64, f64)> {
    let m = scrape(&c.url("/metrics")).await?;
    let n = |r: &str| m.get(&format!("medic_rules_reload_total{{result=\"{r}\"}}")).copied().unwrap_or(0.0);
    Ok((n("success"), n("error")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_is_rejected_and_sighup_reloads_the_fixed_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    let file = rules.join("clickhouse.yaml");
    std::fs::write(&file, GOOD)?;
    // The same file under a second name outside the watched directory: a write through it changes
    // the rules without any file event in the rules directory, so only SIGHUP can pick it up.
    let backdoor = dir.path().join("clickhouse.yaml");
    std::fs::hard_link(&file, &backdoor)?;
    let rules_arg = rules.to_string_lossy().to_string();
    let c =
        ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &["--rules-dir", &rules_arg]).await?;
    let (ok, listed) = reload_state(&c).await?;
    assert_eq!(ok, 1.0);
    assert_eq!(listed["rules"][0]["name"], "readonly-replica");

    // An edit in the directory is noticed by itself, and rejected.
    std::fs::write(&file, GOOD.replace("value: 0", "value: zero"))?;
    let listed = eventually(Duration::from_secs(10), || async {
        let (ok, listed) = reload_state(&c).await?;
        Ok((ok == 0.0).then_some(listed))
    })
    .await?;
    assert_eq!(listed["rules"][0]["name"], "readonly-replica", "the last good set stays active");
    let err = listed["errors"][0].as_str().unwrap_or_default();
    assert!(err.contains("clickhouse.yaml:4:") && err.contains("invalid type"), "{err}");

    // Fixed where the watcher cannot see it: nothing happens until SIGHUP.
    std::fs::write(&backdoor, GOOD.replace("readonly-replica", "readonly-replica-v2"))?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = reloads(&c).await?;
    let (ok, listed) = reload_state(&c).await?;
    assert_eq!(
        (ok, listed["rules"][0]["name"].as_str()),
        (0.0, Some("readonly-replica")),
        "a write outside the rules directory is no file event there (else this test proves nothing about SIGHUP)"
    );
    c.proc.stop_signal(libc::SIGHUP);
    let listed = eventually(Duration::from_secs(10), || async {
        let (ok, listed) = reload_state(&c).await?;
        Ok((ok == 1.0 && listed["rules"][0]["name"] == "readonly-replica-v2").then_some(listed))
    })
    .await?;
    assert_eq!(listed["errors"].as_array().map(Vec::len), Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reloads(&c).await?, (before.0 + 1.0, before.1), "one SIGHUP, one reload");

    // Nothing changed at all: each SIGHUP is still exactly one reload.
    for n in 1..=2 {
        c.proc.stop_signal(libc::SIGHUP);
        let after = eventually(Duration::from_secs(10), || async {
            let r = reloads(&c).await?;
            Ok((r.0 >= before.0 + 1.0 + f64::from(n)).then_some(r))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(after, (before.0 + 1.0 + f64::from(n), before.1));
        assert_eq!(reloads(&c).await?, after, "no second reload behind the signal");
    }
    assert_eq!(reload_state(&c).await?.1["rules"][0]["name"], "readonly-replica-v2");
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

/// The shipped rules are valid, their tests pass, and every shipped rule has a test that states
/// the arguments of its action and one in which a guard holds it back.
#[test]
fn shipped_rules_are_valid_tested_and_pass_their_tests() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = std::process::Command::new(bin("controller")?).args(["rules", "check"]).arg(&dir).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut tests: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("test") && n.ends_with(".yaml")))
        .collect();
    tests.sort();
    assert!(!tests.is_empty());
    let out = std::process::Command::new(bin("controller")?).args(["rules", "test"]).args(&tests).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");

    let mut covered: std::collections::BTreeMap<String, controller::rules::test::Coverage> = Default::default();
    for t in &tests {
        let report = controller::rules::test::run(t).map_err(anyhow::Error::msg)?;
        for (rule, c) in report.coverage {
            let all = covered.entry(rule).or_default();
            all.fires_with_arguments |= c.fires_with_arguments;
            all.blocked |= c.blocked;
        }
    }
    let shipped = controller::rules::load::load_dir(&dir).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(shipped.rules.len() >= 10, "{} rules", shipped.rules.len());
    for r in &shipped.rules {
        let c = covered.get(&r.rule.name).copied().unwrap_or_default();
        assert!(
            c.fires_with_arguments,
            "{}: rule {} has no test expecting it to fire with its steps' arguments (`steps:`)",
            r.file.display(),
            r.rule.name
        );
        assert!(c.blocked, "{}: rule {} has no test in which a guard blocks it", r.file.display(), r.rule.name);
    }
    Ok(())
}
