//! The mixin (`mixin/`: Grafana dashboards and Prometheus rules) checked
//! without a running Prometheus:
//!
//! - the committed files are what `mixin/build.py` writes (`--check`);
//! - `promtool check rules` and `promtool test rules mixin/tests/*.yml`
//!   pass, and every alert has a test where it fires and one where it does
//!   not, and a runbook;
//! - every PromQL expression (panel targets with the template variables
//!   substituted, variable queries, rules) parses with `promql-parser`, and
//!   every metric it selects exists: in the fixture host's golden
//!   exposition (`tests/golden/host1.prom`), or, for the families that only
//!   a serving agent has (HTTP, tasks, watchdog, ledger, pushes, owner
//!   sources, QMP device figures), in the catalogue generated from the code
//!   (`docs/metrics.md`, itself checked by `metrics_doc.rs`), or recorded by
//!   a rule, or one of Prometheus' own series of a scrape (`up`, ...).
//!   The live test (`tests/real/mixin.rs`) then proves each one returns
//!   data from a real agent;
//! - the dashboards' shape: unique uids and panel ids, panels inside the
//!   24-column grid and not overlapping, every query on the `datasource`
//!   variable, every `$variable` defined on its dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

#[path = "../shared/mixin.rs"]
mod files;

use files::{dashboards, label_values, metric_names, mixin_dir, rules, substitute, variables_used};

/// Series every Prometheus adds to a scrape target.
const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Placeholder values for the variables: any that parse.
const VALUES: &[(&str, &str)] = &[
    ("datasource", "prometheus"),
    ("job", ".+"),
    ("instance", "hv1:9847"),
    ("user", ".*"),
    ("project", ".*"),
    ("vm", "vm-1"),
];

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// True when `program` runs; false (after saying so) where it is missing
/// outside CI. Under CI a missing tool fails the test.
fn tool(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "{program} is required under CI but is not runnable");
        eprintln!("SKIPPED: {program} not found (set CI=true to make this a failure)");
    }
    ok
}

fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn committed_files_are_what_the_generator_writes() {
    if !tool("python3", &["--version"]) {
        return;
    }
    let (ok, out) = run("python3", &["build.py", "--check"], &mixin_dir());
    assert!(ok, "{out}");
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !tool("promtool", &["--version"]) {
        return;
    }
    let dir = mixin_dir();
    for f in files::rule_files() {
        let (ok, out) = run(
            "promtool",
            &["check", "rules", &f.display().to_string()],
            &dir,
        );
        assert!(ok, "promtool check rules {}: {out}", f.display());
    }
    let tests = test_files();
    assert!(!tests.is_empty(), "no mixin/tests/*.yml");
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(tests.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = run("promtool", &args, &dir.join("tests"));
    assert!(ok, "promtool test rules: {out}");
}

fn test_files() -> Vec<std::path::PathBuf> {
    let dir = mixin_dir().join("tests");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_and_a_runbook() {
    let alerts: BTreeSet<String> = rules().into_iter().filter_map(|r| r.alert).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    // alertname -> (cases where it fires, cases where it must not)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for f in test_files() {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for t in doc["tests"].as_sequence().into_iter().flatten() {
            for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or_default().to_owned();
                let firing = a["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty());
                let e = cases.entry(name).or_default();
                if firing {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    let mut missing = Vec::new();
    for a in &alerts {
        match cases.get(a) {
            Some((f, q)) if *f > 0 && *q > 0 => {}
            other => missing.push(format!("{a}: (firing, quiet) cases {other:?}")),
        }
    }
    for name in cases.keys() {
        assert!(
            alerts.contains(name),
            "a test names {name}, which no rule defines"
        );
    }
    assert!(
        missing.is_empty(),
        "alerts without both test cases: {missing:#?}"
    );
    for r in rules().into_iter().filter(|r| r.alert.is_some()) {
        for key in ["summary", "description", "runbook"] {
            let v = r
                .annotations
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("");
            assert!(
                v.len() > 20,
                "{}: annotation {key} missing or too short to say what to do",
                r.alert.as_deref().unwrap_or_default()
            );
        }
    }
}

/// Family names of a text exposition (sample lines), histogram suffixes kept.
fn exposition_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `docs/metrics.md`: family name -> type.
fn catalogue() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// Where a metric name comes from, or why it is unknown.
struct Known {
    golden: BTreeSet<String>,
    catalogue: BTreeMap<String, String>,
    recorded: BTreeSet<String>,
}

#[derive(Debug, PartialEq)]
enum Origin {
    Golden,
    Catalogue,
    Recorded,
    Prometheus,
}

impl Known {
    fn load() -> Known {
        let golden = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/host1.prom"),
        )
        .unwrap();
        Known {
            golden: exposition_names(&golden),
            catalogue: catalogue(),
            recorded: rules().into_iter().filter_map(|r| r.record).collect(),
        }
    }

    fn origin(&self, name: &str) -> Result<Origin, String> {
        if self.golden.contains(name) {
            return Ok(Origin::Golden);
        }
        if self.recorded.contains(name) {
            return Ok(Origin::Recorded);
        }
        if PROMETHEUS_SERIES.contains(&name) {
            return Ok(Origin::Prometheus);
        }
        if self.catalogue.get(name).is_some_and(|k| k != "histogram") {
            return Ok(Origin::Catalogue);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.catalogue.get(base).is_some_and(|k| k == "histogram")
            {
                return Ok(Origin::Catalogue);
            }
        }
        Err(format!(
            "{name} is neither in tests/golden/host1.prom, docs/metrics.md, a recording rule nor a Prometheus scrape series"
        ))
    }
}

/// Every PromQL expression of the mixin with where it is, variables
/// substituted.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in dashboards() {
        for p in &d.panels {
            for q in &p.queries {
                out.push((
                    format!("{} / {} / {}", d.file, p.title, q.ref_id),
                    substitute(&q.expr, VALUES),
                ));
            }
        }
        for v in d.variables.iter().filter(|v| v.kind == "query") {
            let (sel, _) = label_values(&v.query).unwrap_or_else(|| {
                panic!(
                    "{}: variable {}: not label_values(...): {}",
                    d.file, v.name, v.query
                )
            });
            out.push((
                format!("{} / variable {}", d.file, v.name),
                substitute(&sel, VALUES),
            ));
        }
    }
    for r in rules() {
        let name = r.record.or(r.alert).unwrap_or_default();
        out.push((format!("{} / {} / {name}", r.file, r.group), r.expr));
    }
    out
}

#[test]
fn every_expression_parses_and_selects_only_metrics_vmscope_exposes() {
    let known = Known::load();
    let exprs = expressions();
    assert!(exprs.len() > 100, "only {} expressions", exprs.len());
    let mut errors = Vec::new();
    let mut by_origin: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (at, expr) in &exprs {
        match metric_names(expr) {
            Err(e) => errors.push(format!("{at}: {expr}: does not parse: {e}")),
            Ok(names) if names.is_empty() => {
                errors.push(format!("{at}: {expr}: selects no metric"))
            }
            Ok(names) => {
                for n in names {
                    match known.origin(&n) {
                        Ok(o) => {
                            by_origin.entry(format!("{o:?}")).or_default().insert(n);
                        }
                        Err(e) => errors.push(format!("{at}: {e}")),
                    }
                }
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    eprintln!("metric names by origin: {by_origin:#?}");
    // Most of what the dashboards show is in the fixture host's exposition.
    assert!(by_origin["Golden"].len() >= 40, "{by_origin:?}");
}

#[test]
fn the_name_check_refuses_a_typo_and_a_bad_expression() {
    let known = Known::load();
    assert_eq!(
        known.origin("vmscope_vm_cpu_seconds_total"),
        Ok(Origin::Golden)
    );
    assert_eq!(
        known.origin("vmscope_http_request_duration_seconds_bucket"),
        Ok(Origin::Catalogue)
    );
    assert_eq!(
        known.origin("vm:vmscope_vm_cpu_seconds:rate1m"),
        Ok(Origin::Recorded)
    );
    assert!(known.origin("vmscope_vm_cpu_secondz_total").is_err());
    // A gauge has no _count series.
    assert!(known.origin("vmscope_host_cpus_count").is_err());
    assert_eq!(
        metric_names(r#"sum by (x) (rate(a_total[1m])) / on(x) {__name__="b"} + c"#),
        Ok(vec!["a_total".to_owned(), "b".to_owned(), "c".to_owned()])
    );
    assert!(metric_names("sum(rate(x[1m])").is_err());
}

#[test]
fn dashboards_are_well_formed_and_use_their_variables() {
    let all = dashboards();
    let file_names: Vec<&str> = all.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        file_names,
        [
            "vmscope-host.json",
            "vmscope-owners.json",
            "vmscope-self.json",
            "vmscope-vm.json",
            "vmscope-watchdog.json"
        ]
    );
    let uids: BTreeSet<&str> = all.iter().map(|d| d.uid.as_str()).collect();
    assert_eq!(uids.len(), all.len(), "duplicate uid");
    for d in &all {
        let names: BTreeSet<&str> = d.variables.iter().map(|v| v.name.as_str()).collect();
        for v in ["datasource", "instance"] {
            assert!(names.contains(v), "{}: no {v} variable", d.file);
        }
        assert!(
            d.json["schemaVersion"].as_i64().is_some_and(|v| v >= 36),
            "{}: schemaVersion",
            d.file
        );
        let ids: BTreeSet<i64> = d.panels.iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), d.panels.len(), "{}: duplicate panel id", d.file);
        for (i, p) in d.panels.iter().enumerate() {
            let [x, y, w, h] = p.grid;
            assert!(
                x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{}: {}: {:?}",
                d.file,
                p.title,
                p.grid
            );
            for q in d.panels[..i].iter() {
                let [qx, qy, qw, qh] = q.grid;
                let overlap = x < qx + qw && qx < x + w && y < qy + qh && qy < y + h;
                assert!(!overlap, "{}: {} overlaps {}", d.file, p.title, q.title);
            }
            assert!(
                !p.queries.is_empty(),
                "{}: {} has no query",
                d.file,
                p.title
            );
            for q in &p.queries {
                for used in variables_used(&q.expr) {
                    assert!(
                        names.contains(used.as_str()),
                        "{}: {}: ${used} is not a variable of the dashboard",
                        d.file,
                        p.title
                    );
                }
            }
        }
        // Every datasource reference is the variable, so the import asks
        // for nothing and a second Prometheus is one click away.
        let text = d.json.to_string();
        for (i, _) in text.match_indices("\"datasource\":{") {
            assert!(
                text[i..].starts_with(
                    "\"datasource\":{\"type\":\"prometheus\",\"uid\":\"${datasource}\"}"
                ),
                "{}: a datasource not on the variable: {}",
                d.file,
                &text[i..(i + 80).min(text.len())]
            );
        }
    }
    // The owner variables (docs/proxy.md: the Grafana owner variable is the
    // tenant label's name) on the dashboards that show per-VM or per-owner data.
    for f in [
        "vmscope-host.json",
        "vmscope-owners.json",
        "vmscope-vm.json",
    ] {
        let d = all.iter().find(|d| d.file == f).unwrap();
        for v in ["user", "project"] {
            assert!(
                d.variables
                    .iter()
                    .any(|x| x.name == v && x.all_value.as_deref() == Some(".*")),
                "{f}: {v}"
            );
        }
    }
}
