//! Reading the mixin (`mixin/` at the repository root) for the tests: the
//! dashboards' panels and template variables, the rules, and Grafana's
//! variable substitution. Shared by the pure test (`tests/pure/mixin.rs`:
//! parse and name checks) and the live one (`tests/real/mixin.rs`: every
//! query against a real Prometheus), included in both with `#[path]`.
//!
//! Reads: `mixin/dashboards/*.json`, `mixin/rules/*.yml`. Emits: plain
//! structs. Fails: panics naming the file (these are test helpers over
//! files in the repository).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn mixin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mixin")
}

/// One query of a panel (a Grafana target).
#[derive(Debug, Clone)]
pub struct Query {
    pub ref_id: String,
    pub expr: String,
    pub legend: String,
    pub instant: bool,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub id: i64,
    pub title: String,
    pub kind: String,
    /// Grid position: x, y, w, h (Grafana's 24-column grid).
    pub grid: [i64; 4],
    pub unit: String,
    pub queries: Vec<Query>,
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: String,
    /// For query variables: `label_values(<selector>, <label>)`.
    pub query: String,
    pub all_value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub uid: String,
    pub title: String,
    pub json: Value,
    pub panels: Vec<Panel>,
    pub variables: Vec<Variable>,
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn panels_of(list: &Value, out: &mut Vec<Panel>) {
    for p in list.as_array().into_iter().flatten() {
        if p["type"] == "row" {
            panels_of(&p["panels"], out);
            continue;
        }
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_i64().unwrap_or(-1);
        let queries = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Query {
                ref_id: str_of(t, "refId"),
                expr: str_of(t, "expr"),
                legend: str_of(t, "legendFormat"),
                instant: t["instant"].as_bool().unwrap_or(false),
            })
            .collect();
        out.push(Panel {
            id: p["id"].as_i64().unwrap_or(-1),
            title: str_of(p, "title"),
            kind: str_of(p, "type"),
            grid: [n("x"), n("y"), n("w"), n("h")],
            unit: p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("short")
                .to_owned(),
            queries,
        });
    }
}

/// Every dashboard in `mixin/dashboards`, sorted by file name.
pub fn dashboards() -> Vec<Dashboard> {
    let dir = mixin_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let mut panels = Vec::new();
            panels_of(&json["panels"], &mut panels);
            let variables = json["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| Variable {
                    name: str_of(v, "name"),
                    kind: str_of(v, "type"),
                    query: v["query"]["query"]
                        .as_str()
                        .or_else(|| v["query"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    all_value: v["allValue"].as_str().map(str::to_owned),
                })
                .collect();
            Dashboard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                uid: str_of(&json, "uid"),
                title: str_of(&json, "title"),
                json,
                panels,
                variables,
            }
        })
        .collect()
}

/// One rule of `mixin/rules/*.yml`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: String,
    pub group: String,
    pub record: Option<String>,
    pub alert: Option<String>,
    pub expr: String,
    pub annotations: serde_yaml::Mapping,
}

pub fn rule_files() -> Vec<PathBuf> {
    let dir = mixin_dir().join("rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in rule_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        for g in doc["groups"].as_sequence().into_iter().flatten() {
            for r in g["rules"].as_sequence().into_iter().flatten() {
                let s = |k: &str| r[k].as_str().map(str::to_owned);
                out.push(Rule {
                    file: path.file_name().unwrap().to_string_lossy().into_owned(),
                    group: g["name"].as_str().unwrap_or_default().to_owned(),
                    record: s("record"),
                    alert: s("alert"),
                    expr: s("expr").unwrap_or_default(),
                    annotations: r["annotations"].as_mapping().cloned().unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// Grafana's built-in interval variables, as a test substitutes them: a
/// rate window of several scrapes (the lab scrapes every second) and a range
/// that covers the test's whole run.
pub const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "15s"),
    ("__interval", "5s"),
    ("__range", "5m"),
];

/// `expr` with `$name` and `${name}` replaced by `values` (then the
/// built-ins). Longer names first, so `$vm` never eats `$vm_id`.
pub fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut all: Vec<(&str, &str)> = values.iter().chain(BUILTINS).copied().collect();
    all.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut s = expr.to_owned();
    for (name, value) in all {
        s = s.replace(&format!("${{{name}}}"), value);
        s = s.replace(&format!("${name}"), value);
    }
    s
}

/// The `$variables` an expression uses (not the `$__` built-ins).
pub fn variables_used(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let mut j = i + 1;
            let braced = j < b.len() && b[j] == b'{';
            if braced {
                j += 1;
            }
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            let name = &expr[start..j];
            if !name.is_empty() && !name.starts_with("__") {
                out.push(name.to_owned());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `label_values(<selector>, <label>)` -> (selector, label).
pub fn label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim().to_owned(), label.trim().to_owned()))
}

/// The metric names an expression selects (by name or `__name__="..."`),
/// or the parser's error.
pub fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{self, Expr, VectorSelector};
    fn sel(vs: &VectorSelector, out: &mut Vec<String>) {
        if let Some(n) = &vs.name {
            out.push(n.clone());
        }
        for m in &vs.matchers.matchers {
            if m.name == "__name__" && matches!(m.op, MatchOp::Equal) {
                out.push(m.value.clone());
            }
        }
    }
    fn walk(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(p) = &a.param {
                    walk(p, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
            Expr::VectorSelector(vs) => sel(vs, out),
            Expr::MatrixSelector(ms) => sel(&ms.vs, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
        }
    }
    let e = parser::parse(expr)?;
    let mut out = Vec::new();
    walk(&e, &mut out);
    out.sort();
    out.dedup();
    Ok(out)
}
