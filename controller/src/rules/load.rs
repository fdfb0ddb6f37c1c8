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

/// The ClickHouse statements a rule may run, as forms (keywords case-insensitive, any
/// whitespace, one optional trailing `;`, no comments). Anything else is refused at load time and
/// again before running: a rule file must not become a SQL console. Each form acts on what it
/// names on one node: no `ON CLUSTER` (it would bypass the blast-radius guards), no `KILL` with a
/// condition broader than one query or one table's mutations, no `OPTIMIZE … DEDUPLICATE`
/// (it deletes rows).
pub const SQL_ALLOW_LIST: &[&str] = &[
    "SYSTEM FLUSH LOGS",
    "SYSTEM DROP DNS CACHE | MARK CACHE | UNCOMPRESSED CACHE",
    "SYSTEM START MERGES | FETCHES | REPLICATED SENDS [db.table]",
    "SYSTEM RESTART REPLICA db.table",
    "SYSTEM SYNC REPLICA db.table [STRICT | LIGHTWEIGHT | PULL]",
    "SYSTEM RELOAD DICTIONARY [db.]name",
    "OPTIMIZE TABLE db.table [PARTITION ID '…' | PARTITION '…' | PARTITION 123] [FINAL]",
    "KILL QUERY WHERE query_id = '…' [AND user = '…'] [SYNC | ASYNC | TEST]",
    "KILL MUTATION WHERE mutation_id = '…' or database = '…' AND table = '…' (ANDed, any order) [SYNC | ASYNC | TEST]",
];

/// Whether `statement` is one of the [`SQL_ALLOW_LIST`] forms.
pub fn sql_allowed(statement: &str) -> bool {
    sql_check(statement).is_ok()
}

/// Checks `statement` against the [`SQL_ALLOW_LIST`]; the error says what is wrong with it.
pub fn sql_check(statement: &str) -> Result<(), String> {
    let toks = lex(statement)?;
    let mut p = Cursor { toks: &toks, at: 0 };
    if toks.windows(2).any(|w| w[0].is_kw("ON") && w[1].is_kw("CLUSTER")) {
        return Err("ON CLUSTER is not allowed: a rule acts on one node at a time, under its blast-radius guard".into());
    }
    let not_listed = || "it is not on the allow-list".to_string();
    if p.kw("SYSTEM") {
        if p.kws(&["FLUSH", "LOGS"]) {
        } else if p.kw("DROP") {
            if !((p.kw("DNS") || p.kw("MARK") || p.kw("UNCOMPRESSED")) && p.kw("CACHE")) {
                return Err(not_listed());
            }
        } else if p.kw("START") {
            if !(p.kw("MERGES") || p.kw("FETCHES") || p.kws(&["REPLICATED", "SENDS"])) {
                return Err(not_listed());
            }
            if !p.at_end() {
                p.table().ok_or("SYSTEM START … takes at most a table name ([db.]table)")?;
            }
        } else if p.kws(&["RESTART", "REPLICA"]) {
            p.table().ok_or("SYSTEM RESTART REPLICA needs one table: SYSTEM RESTART REPLICA db.table")?;
        } else if p.kws(&["SYNC", "REPLICA"]) {
            p.table().ok_or("SYSTEM SYNC REPLICA needs one table: SYSTEM SYNC REPLICA db.table")?;
            let _ = p.kw("STRICT") || p.kw("LIGHTWEIGHT") || p.kw("PULL");
        } else if p.kws(&["RELOAD", "DICTIONARY"]) {
            p.table().ok_or("SYSTEM RELOAD DICTIONARY needs one dictionary: SYSTEM RELOAD DICTIONARY [db.]name")?;
        } else {
            return Err(not_listed());
        }
    } else if p.kws(&["OPTIMIZE", "TABLE"]) {
        p.table().ok_or("OPTIMIZE TABLE needs one table: OPTIMIZE TABLE db.table")?;
        if p.kw("PARTITION") {
            let id = p.kw("ID");
            match p.next() {
                Some(Tok::Str(_)) => {}
                Some(Tok::Num(_)) if !id => {}
                _ => return Err("OPTIMIZE … PARTITION takes ID '…', a string or a number".into()),
            }
        }
        let _ = p.kw("FINAL");
        if p.kw("DEDUPLICATE") {
            return Err("OPTIMIZE … DEDUPLICATE deletes rows and is not allowed".into());
        }
    } else if p.kw("KILL") {
        let query = p.kw("QUERY");
        if !query && !p.kw("MUTATION") {
            return Err(not_listed());
        }
        let (what, columns): (&str, &[&str]) = if query {
            ("KILL QUERY needs WHERE query_id = '…' (optionally AND user = '…')", &["query_id", "user"])
        } else {
            (
                "KILL MUTATION needs WHERE mutation_id = '…', or database = '…' AND table = '…'",
                &["mutation_id", "database", "table"],
            )
        };
        let broad =
            || format!("{what}: any broader condition (such as WHERE 1) would kill what the rule did not mean to");
        if !p.kw("WHERE") {
            return Err(broad());
        }
        let mut seen = Vec::new();
        loop {
            let col = p.name().map(|c| c.to_ascii_lowercase()).filter(|c| columns.contains(&c.as_str()));
            let (Some(col), true, Some(Tok::Str(_))) = (col, p.sym('='), p.next()) else { return Err(broad()) };
            seen.push(col);
            if !p.kw("AND") {
                break;
            }
        }
        let has = |k: &str| seen.iter().any(|c| c == k);
        let pinned = if query { has("query_id") } else { has("mutation_id") || (has("database") && has("table")) };
        if !pinned {
            return Err(broad());
        }
        let _ = p.kw("SYNC") || p.kw("ASYNC") || p.kw("TEST");
    } else {
        return Err(not_listed());
    }
    if p.at_end() {
        Ok(())
    } else if p.toks[p.at..].contains(&Tok::Sym(';')) {
        Err("only one statement is allowed".into())
    } else {
        Err(format!("unexpected {} after the statement", p.toks[p.at]))
    }
}

/// A token of a rule's statement: just enough of ClickHouse's lexer to check the allow-list.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: keyword or identifier.
    Word(String),
    /// A `backquoted` or "double-quoted" identifier.
    Quoted(String),
    Str(String),
    Num(String),
    Sym(char),
}

impl Tok {
    fn is_kw(&self, k: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(k))
    }
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) | Tok::Num(w) => write!(f, "`{w}`"),
            Tok::Quoted(w) => write!(f, "identifier {w:?}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Sym(c) => write!(f, "`{c}`"),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '-' if it.peek() == Some(&'-') => return Err("comments are not allowed in a rule's statement".into()),
            '/' if it.peek() == Some(&'*') => return Err("comments are not allowed in a rule's statement".into()),
            '#' => return Err("comments are not allowed in a rule's statement".into()),
            '\'' | '`' | '"' => {
                let mut v = String::new();
                loop {
                    match it.next() {
                        None => return Err(format!("unterminated {c}…{c} in the statement")),
                        Some('\\') => v.push(it.next().ok_or("the statement ends inside an escape")?),
                        Some(q) if q == c && it.peek() == Some(&c) => {
                            it.next();
                            v.push(c);
                        }
                        Some(q) if q == c => break,
                        Some(ch) if ch.is_control() => return Err("control characters are not allowed".into()),
                        Some(ch) => v.push(ch),
                    }
                }
                out.push(if c == '\'' { Tok::Str(v) } else { Tok::Quoted(v) });
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut w = c.to_string();
                while let Some(&n) = it.peek().filter(|n| n.is_ascii_alphanumeric() || **n == '_') {
                    w.push(n);
                    it.next();
                }
                out.push(Tok::Word(w));
            }
            c if c.is_ascii_digit() => {
                let mut w = c.to_string();
                while let Some(&n) = it.peek().filter(|n| n.is_ascii_digit()) {
                    w.push(n);
                    it.next();
                }
                out.push(Tok::Num(w));
            }
            '.' | ',' | '=' | '(' | ')' | ';' => out.push(Tok::Sym(c)),
            c => return Err(format!("unexpected character {c:?} in the statement")),
        }
    }
    Ok(out)
}

struct Cursor<'a> {
    toks: &'a [Tok],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.peek().cloned();
        self.at += t.is_some() as usize;
        t
    }
    fn done(&self) -> bool {
        self.at >= self.toks.len()
    }
    /// Nothing left but an optional `;`.
    fn at_end(&self) -> bool {
        self.done() || self.toks[self.at..] == [Tok::Sym(';')]
    }
    fn kw(&mut self, k: &str) -> bool {
        let yes = self.peek().is_some_and(|t| t.is_kw(k));
        self.at += yes as usize;
        yes
    }
    /// All of `ks` in a row, or nothing consumed.
    fn kws(&mut self, ks: &[&str]) -> bool {
        let yes = ks.iter().enumerate().all(|(i, k)| self.toks.get(self.at + i).is_some_and(|t| t.is_kw(k)));
        if yes {
            self.at += ks.len();
        }
        yes
    }
    fn sym(&mut self, c: char) -> bool {
        let yes = self.peek() == Some(&Tok::Sym(c));
        self.at += yes as usize;
        yes
    }
    fn name(&mut self) -> Option<String> {
        match self.peek()? {
            Tok::Word(w) | Tok::Quoted(w) => {
                let w = w.clone();
                self.at += 1;
                Some(w)
            }
            _ => None,
        }
    }
    /// `[db.]name`, each bare or quoted.
    fn table(&mut self) -> Option<String> {
        let first = self.name()?;
        if self.sym('.') { self.name().map(|t| format!("{first}.{t}")) } else { Some(first) }
    }
}

/// What is wrong with a database, table, column, disk or volume name that goes into a statement
/// (quoted there), if anything: empty, over 255 bytes, or with control characters.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a name must not be empty".into())
    } else if name.len() > 255 {
        Some(format!("{name:?} is longer than 255 bytes"))
    } else if name.chars().any(char::is_control) {
        Some(format!("{name:?} contains control characters"))
    } else {
        None
    }
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
    load_files(&files)
}

/// Loads these rule files as one set; any error rejects the whole set.
pub fn load_files(files: &[PathBuf]) -> Result<RuleSet, Vec<RuleError>> {
    let files = files.to_vec();
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
        for (n, message) in validate_sql(&rule) {
            let (line, column) = locate_statement(text, line, n).unwrap_or((line, column));
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

/// The rule's `sql` steps that are not on the allow-list: (which `sql` step of the rule, message).
fn validate_sql(r: &Rule) -> Vec<(usize, String)> {
    let statements = r.steps.iter().filter_map(|s| if let Step::Sql(q) = s { Some(&q.statement) } else { None });
    statements
        .enumerate()
        .filter_map(|(i, st)| {
            let why = sql_check(st).err()?;
            Some((
                i,
                format!("statement {st:?} is not allowed: {why}. A rule may run only: {}", SQL_ALLOW_LIST.join("; ")),
            ))
        })
        .collect()
}

/// Where the `n`th `statement:` after line `from` (1-based) is written, to point at it.
fn locate_statement(text: &str, from: usize, n: usize) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .filter_map(|(i, l)| l.find("statement:").map(|pos| (i + 1, pos + 1)))
        .nth(n)
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
                for (what, name) in [("database", &t.database), ("table", &t.table), ("column", &t.column)] {
                    if let Some(p) = name_problem(name) {
                        e.push(format!("ttl {what}: {p}"));
                    }
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
            Step::Rebalance(rb) => {
                if !(rb.target_free > 0.0 && rb.target_free < 1.0) {
                    e.push(format!("rebalance target_free {} must be between 0 and 1", rb.target_free));
                }
                if rb.max_partitions == 0 {
                    e.push("rebalance max_partitions must be at least 1".into());
                }
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
        for ok in [
            "system   flush logs",
            "SYSTEM FLUSH LOGS;",
            "SYSTEM DROP MARK CACHE",
            "SYSTEM START MERGES",
            "SYSTEM START MERGES `my-db`.events;",
            "SYSTEM START REPLICATED SENDS db.t",
            "SYSTEM RESTART REPLICA db.t",
            "SYSTEM RESTART REPLICA `my-db`.`ev``ents`",
            "SYSTEM SYNC REPLICA db.t LIGHTWEIGHT",
            "SYSTEM RELOAD DICTIONARY dicts.geo",
            "OPTIMIZE TABLE db.t PARTITION ID '20260101' FINAL",
            "OPTIMIZE TABLE db.t",
            "KILL QUERY WHERE query_id = 'abc-123' SYNC",
            "kill query where user = 'etl' and query_id = 'it''s'",
            "KILL MUTATION WHERE mutation_id = 'mutation_7.txt'",
            "KILL MUTATION WHERE database = 'db' AND table = 't'",
            "KILL MUTATION WHERE table = 't' AND database = 'db' AND mutation_id = 'm' ASYNC",
        ] {
            assert_eq!(sql_check(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("DROP TABLE t", "not on the allow-list"),
            ("SYSTEM FLUSH LOGSX", "not on the allow-list"),
            ("SYSTEM FLUSH LOGS; DROP TABLE t", "only one statement"),
            ("SYSTEM FLUSH LOGS -- hi", "comments"),
            ("SYSTEM RESTART REPLICA", "needs one table"),
            ("SYSTEM RESTART REPLICAS", "not on the allow-list"),
            ("SYSTEM RESTART REPLICA db.t ON CLUSTER c", "ON CLUSTER"),
            ("OPTIMIZE TABLE db.t FINAL DEDUPLICATE", "deletes rows"),
            ("OPTIMIZE TABLE db.t FINAL SETTINGS x = 1", "unexpected `SETTINGS`"),
            ("KILL QUERY WHERE 1", "query_id"),
            ("KILL QUERY", "query_id"),
            ("KILL QUERY WHERE user = 'etl'", "query_id"),
            ("KILL QUERY WHERE query_id = 'a' OR 1 = 1", "unexpected `OR`"),
            ("KILL QUERY WHERE query_id LIKE '%'", "query_id"),
            ("KILL QUERY WHERE query_id = query_id", "query_id"),
            ("KILL MUTATION WHERE database = 'db'", "mutation_id"),
            ("KILL MUTATION WHERE 1", "mutation_id"),
            ("KILL QUERY WHERE query_id = 'unterminated", "unterminated"),
        ] {
            match sql_check(bad) {
                Err(e) => assert!(e.contains(why), "{bad}: {e}"),
                Ok(()) => panic!("{bad} must be refused"),
            }
        }
        assert!(!sql_allowed("KILL QUERY WHERE 1"));
    }

    #[test]
    fn a_statement_off_the_allow_list_is_reported_where_it_is_written() {
        let text = GOOD.replace("SYSTEM FLUSH LOGS", "KILL QUERY WHERE 1");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        let line = text.lines().position(|l| l.contains("KILL QUERY")).unwrap() + 1;
        let column = text.lines().nth(line - 1).unwrap().find("statement:").unwrap() + 1;
        assert!(e[0].starts_with(&format!("r.yaml:{line}:{column}: rule \"readonly-replica\"")), "{}", e[0]);
        assert!(e[0].contains("KILL QUERY needs WHERE query_id = '…'"), "{}", e[0]);
        assert!(e[0].contains("A rule may run only: SYSTEM FLUSH LOGS;"), "{}", e[0]);
    }

    #[test]
    fn ttl_names_must_be_quotable_and_rebalance_must_move_something() {
        let e = errors(&GOOD.replace("table: events", "table: \"ev\\nents\""));
        assert!(e.iter().any(|e| e.contains("ttl table") && e.contains("control characters")), "{e:?}");
        assert!(errors(&GOOD.replace("table: events", "table: events-2026")).is_empty(), "a '-' is fine: it is quoted");
        let e =
            errors(&GOOD.replace("- sql: { statement: \"SYSTEM FLUSH LOGS\" }", "- rebalance: { max_partitions: 0 }"));
        assert!(e.iter().any(|e| e.contains("max_partitions must be at least 1")), "{e:?}");
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
