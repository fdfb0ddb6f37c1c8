//! Reading and validating a directory of rule files. A set is accepted whole or not at all, and
//! every error says file:line:column and what was expected.

use super::model::{Condition, Rule, RuleFile, Step};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file, where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// A rule and where it was written.
#[derive(Debug, Clone)]
pub struct LoadedRule {
    pub rule: Rule,
    pub file: PathBuf,
    pub line: usize,
}

/// A complete, valid set of rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<LoadedRule>,
}

impl RuleSet {
    pub fn get(&self, name: &str) -> Option<&LoadedRule> {
        self.rules.iter().find(|r| r.rule.name == name)
    }
}

/// ClickHouse statements a rule may run, by prefix (compared case-insensitively, whitespace
/// folded). Anything else is refused at load time: a rule file must not become a SQL console.
pub const SQL_ALLOW_LIST: &[&str] = &[
    "KILL MUTATION ",
    "KILL QUERY ",
    "SYSTEM FLUSH LOGS",
    "SYSTEM RESTART REPLICA ",
    "SYSTEM SYNC REPLICA ",
    "SYSTEM START MERGES",
    "SYSTEM START FETCHES",
    "SYSTEM START REPLICATED SENDS",
    "SYSTEM DROP DNS CACHE",
    "SYSTEM DROP MARK CACHE",
    "SYSTEM DROP UNCOMPRESSED CACHE",
    "SYSTEM RELOAD DICTIONARY ",
    "OPTIMIZE TABLE ",
];

pub fn sql_allowed(statement: &str) -> bool {
    let folded = statement.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase();
    let single = !folded.trim_end_matches(';').contains(';');
    single
        && SQL_ALLOW_LIST
            .iter()
            .any(|p| folded.starts_with(p.trim_end()) && (folded.len() == p.trim_end().len() || p.ends_with(' ')))
}

/// Rule files in `dir`: `*.yaml`/`*.yml`, except test files (`*test*.yaml`), in name order.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let err = |message: String| RuleError { file: dir.to_path_buf(), line: 0, column: 0, message };
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read the rules directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.contains("test") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every rule file of `dir`; any error rejects the whole set.
pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
    let files = rule_files(dir).map_err(|e| vec![e])?;
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&f, &text) {
                Ok(rules) => set.rules.extend(rules),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => {
                errors.push(RuleError { file: f.clone(), line: 0, column: 0, message: format!("cannot read: {e}") })
            }
        }
    }
    let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for r in &set.rules {
        if let Some((file, line)) = seen.get(&r.rule.name) {
            errors.push(RuleError {
                file: r.file.clone(),
                line: r.line,
                column: 1,
                message: format!(
                    "rule name {:?} is already used at {}:{line}; names must be unique",
                    r.rule.name,
                    file.display()
                ),
            });
        } else {
            seen.insert(r.rule.name.clone(), (r.file.clone(), r.line));
        }
    }
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

/// Parses one file's text; `path` is only for messages.
pub fn parse(path: &Path, text: &str) -> Result<Vec<LoadedRule>, Vec<RuleError>> {
    let file: RuleFile = serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        vec![RuleError { file: path.to_path_buf(), line, column, message: e.to_string() }]
    })?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for rule in file.rules {
        let (line, column) = locate_rule(text, &rule.name);
        for message in validate(&rule) {
            errors.push(RuleError {
                file: path.to_path_buf(),
                line,
                column,
                message: format!("rule {:?}: {message}", rule.name),
            });
        }
        out.push(LoadedRule { rule, file: path.to_path_buf(), line });
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Where `name: <name>` is written, for errors found after parsing.
fn locate_rule(text: &str, name: &str) -> (usize, usize) {
    for (i, l) in text.lines().enumerate() {
        if let Some(pos) = l.find("name:") {
            let v = l[pos + 5..].trim().trim_matches(|c| c == '"' || c == '\'');
            if v == name {
                return (i + 1, pos + 1);
            }
        }
    }
    (1, 1)
}

/// Checks that deserialisation cannot express: consistency, bounds, the SQL allow-list.
fn validate(r: &Rule) -> Vec<String> {
    let mut e = Vec::new();
    if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        e.push("name must be non-empty letters, digits, '-', '_' or '.'".into());
    }
    if r.steps.is_empty() {
        e.push("`do` needs at least one step".into());
    }
    let Some(condition) = r.when.condition() else {
        e.push("`when` needs exactly one of threshold, anomaly, outlier, forecast, log, absent".into());
        return e;
    };
    match &condition {
        Condition::Threshold(t) if !t.value.is_finite() => e.push("threshold value must be a finite number".into()),
        Condition::Anomaly(a) if !(a.min_score > 0.0 && a.min_score <= 1.0) => {
            e.push(format!("anomaly min_score {} must be in (0, 1]", a.min_score))
        }
        Condition::Log(l) if l.signature.is_empty() || l.count == 0 => {
            e.push("log match needs a signature and a count of at least 1".into())
        }
        _ => {}
    }
    for s in &r.steps {
        match s {
            Step::Ttl(t) => {
                if t.min > t.max {
                    e.push(format!("ttl min ({:?}) is longer than max ({:?})", t.min, t.max));
                }
                if !(t.factor > 0.0 && t.factor < 1.0) {
                    e.push(format!("ttl factor {} must be between 0 and 1 (it shortens the TTL)", t.factor));
                }
                if t.min.is_zero() {
                    e.push("ttl min must be more than 0: a TTL of 0 deletes everything".into());
                }
            }
            Step::Scale(sc) => {
                if sc.min > sc.max {
                    e.push(format!("scale min ({}) is above max ({})", sc.min, sc.max));
                }
                if sc.step == 0 {
                    e.push("scale step must not be 0".into());
                }
            }
            Step::Sql(q) if !sql_allowed(&q.statement) => e.push(format!(
                "statement {:?} is not on the allow-list (one of: {})",
                q.statement,
                SQL_ALLOW_LIST.iter().map(|s| s.trim()).collect::<Vec<_>>().join(", ")
            )),
            Step::Rebalance(rb) if !(rb.target_free > 0.0 && rb.target_free < 1.0) => {
                e.push(format!("rebalance target_free {} must be between 0 and 1", rb.target_free))
            }
            Step::Notify(n) if !["critical", "error", "warning", "info"].contains(&n.severity.as_str()) => {
                e.push(format!("notify severity {:?} must be critical, error, warning or info", n.severity))
            }
            _ => {}
        }
    }
    let b = &r.guards.blast_radius;
    if b.max_nodes == 0 || !(b.max_percent > 0.0 && b.max_percent <= 100.0) {
        e.push("blast_radius needs max_nodes >= 1 and max_percent in (0, 100]".into());
    }
    if let Some(rl) = &r.guards.rate_limit
        && (rl.max == 0 || rl.per.is_zero())
    {
        e.push("rate_limit needs max >= 1 and a non-zero per".into());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
rules:
  - name: disk-ttl
    description: Shorten the TTL of the events table when its disk will fill within a day.
    when:
      forecast: { resource: "clickhouse_disk:*", within: 24h }
      nodes: { role: clickhouse }
      for: 10m
    do:
      - ttl: { database: analytics, table: events, min: 3d, max: 30d }
    guards:
      cooldown: 1h
      rate_limit: { max: 2, per: 1d }
    verify: { clears_within: 30m }
  - name: readonly-replica
    when:
      threshold: { metric: clickhouse_replica_is_readonly, op: ">", value: 0 }
      for: 2m
    do:
      - restart: { how: replica }
      - sql: { statement: "SYSTEM FLUSH LOGS" }
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("r.yaml"), text) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_valid_file_loads_with_defaults_filled_in() {
        let rules = parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(rules.len(), 2);
        let r = &rules[0].rule;
        assert_eq!(rules[0].line, 3);
        assert_eq!(r.when.hold, std::time::Duration::from_secs(600));
        assert!(matches!(r.when.condition(), Some(Condition::Forecast(ref f)) if f.pessimistic));
        assert_eq!(r.guards.blast_radius.max_nodes, 1, "acting on one node at a time unless told otherwise");
        assert!(r.on_failure.rollback && r.on_failure.escalate);
        let Step::Ttl(t) = &r.steps[0] else { panic!() };
        assert_eq!((t.column.as_str(), t.factor), ("ts", 0.8));
    }

    #[test]
    fn syntax_and_type_errors_say_file_line_and_column() {
        let bad = GOOD.replace("within: 24h", "within: soon");
        let e = errors(&bad);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("r.yaml:6:"), "{}", e[0]);
        assert!(e[0].contains("\"soon\" is not a duration"), "{}", e[0]);

        let e = errors(&GOOD.replace("cooldown: 1h", "cooldwn: 1h"));
        assert!(e[0].starts_with("r.yaml:12:") && e[0].contains("unknown field `cooldwn`"), "{e:?}");

        let e = errors(&GOOD.replace("- restart: { how: replica }", "- reboot: {}"));
        assert!(e[0].contains("unknown variant `reboot`") && e[0].contains("restart"), "{e:?}");
    }

    #[test]
    fn semantic_errors_point_at_the_rule() {
        let e = errors(&GOOD.replace("min: 3d, max: 30d", "min: 30d, max: 3d"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("r.yaml:3:5: rule \"disk-ttl\": ttl min"), "{}", e[0]);
        let e = errors(&GOOD.replace("SYSTEM FLUSH LOGS", "DROP TABLE analytics.events"));
        assert!(e[0].contains("not on the allow-list"), "{e:?}");
    }

    #[test]
    fn only_allow_listed_single_statements_pass() {
        assert!(sql_allowed("KILL MUTATION WHERE mutation_id = 'x'"));
        assert!(sql_allowed("system   flush logs"));
        assert!(sql_allowed("SYSTEM RESTART REPLICA db.t"));
        assert!(!sql_allowed("SYSTEM FLUSH LOGS; DROP TABLE t"));
        assert!(!sql_allowed("DROP TABLE t"));
        assert!(!sql_allowed("SYSTEM FLUSH LOGSX"));
    }

    #[test]
    fn a_directory_is_accepted_whole_or_not_at_all_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("a-test.yaml"), "not a rule file: [").unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().rules.len(), 2, "test files are not rule files");
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].to_string().contains("already used at"), "{}", e[0]);
    }
}
