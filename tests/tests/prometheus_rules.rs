//! The shipped Prometheus alert rules are valid (`promtool check rules`) and behave as their unit
//! tests specify (`promtool test rules`): every alert stays quiet before its condition holds and
//! fires with the expected labels and annotations after. `tests/run` installs promtool.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running promtool ({e}); tests/run installs it (Debian package prometheus)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn files(suffix: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("deploy/prometheus exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn every_rule_file_is_valid() {
    let rules: Vec<String> = files("-rules.yaml");
    assert!(rules.len() >= 2, "{rules:?}");
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    promtool(&args);
}

#[test]
fn every_alert_behaves_as_its_unit_test_says() {
    let tests = files("-rules-test.yaml");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    promtool(&args);
}

#[test]
fn every_alert_has_for_severity_summary_description_runbook_and_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let runbooks = std::fs::read_to_string(dir.join("runbooks.md")).expect("runbooks.md");
    let tested: String =
        files("-rules-test.yaml").iter().map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default()).collect();
    for f in files("-rules.yaml") {
        let text = std::fs::read_to_string(dir.join(&f)).expect("rule file");
        for block in text.split("- alert: ").skip(1) {
            let name = block.lines().next().unwrap_or_default().trim();
            for key in ["for:", "severity:", "summary:", "description:", "runbook_url:"] {
                assert!(block.contains(key), "{f}: {name} lacks {key}");
            }
            let anchor = block.split("runbooks.md#").nth(1).and_then(|s| s.split('"').next()).unwrap_or_default();
            assert!(
                runbooks.to_lowercase().contains(&format!("### {anchor}")),
                "{f}: {name}: no runbook section #{anchor}"
            );
            assert!(tested.contains(&format!("alertname: {name}\n")), "{f}: {name} has no promtool test");
        }
    }
}

/// The Kubernetes PrometheusRule carries exactly the groups of the plain rule files.
#[test]
fn the_prometheusrule_object_matches_the_rule_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let load = |f: &str| -> serde_norway::Value {
        serde_norway::from_str(&std::fs::read_to_string(dir.join(f)).expect("readable")).expect("valid YAML")
    };
    let mut groups = Vec::new();
    for f in ["medic-rules.yaml", "clickhouse-rules.yaml"] {
        groups.extend(load(f)["groups"].as_sequence().cloned().unwrap_or_default());
    }
    let object = load("prometheusrule.yaml");
    assert_eq!(object["kind"], serde_norway::Value::from("PrometheusRule"));
    assert_eq!(object["apiVersion"], serde_norway::Value::from("monitoring.coreos.com/v1"));
    assert_eq!(
        object["spec"]["groups"].as_sequence().cloned().unwrap_or_default(),
        groups,
        "deploy/prometheus/prometheusrule.yaml is stale: regenerate it from the rule files"
    );
}
