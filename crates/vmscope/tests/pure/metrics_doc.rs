//! `docs/metrics.md`, the metric catalogue, is generated from the code: every
//! `Desc` (name, type, help) declared in `crates/vmscope/src`. This test
//! fails when the document and the code disagree; regenerate it with
//! `UPDATE_DOCS=1 cargo test -p vmscope --test pure metrics_doc`.
//!
//! A second check keeps the extraction honest: every family that the
//! fixture-tree golden exposition carries must be in the catalogue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;

struct Family {
    kind: String,
    help: String,
    file: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The string literals of a call whose opening parenthesis is behind
/// `text[..at]`, up to its closing parenthesis, unescaped.
fn literals(text: &str, at: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 1;
    let mut chars = text[at..].chars();
    while let Some(c) = chars.next() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some(o) => s.push(o),
                            None => {}
                        },
                        o => s.push(o),
                    }
                }
                out.push(s);
            }
            _ => {}
        }
    }
    out
}

/// Every `vmscope_*` family declared in the source, by name.
fn declared() -> BTreeMap<String, Family> {
    let direct = Regex::new(r"Desc::(gauge|counter|histogram)\(").unwrap();
    let macro_form = Regex::new(r"desc!\(\s*\w+,\s*(gauge|counter|histogram),").unwrap();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut out = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit-test modules declare descriptors of their own: not exported.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let rel = path.strip_prefix(src_dir()).unwrap().display().to_string();
        for re in [&direct, &macro_form] {
            for m in re.captures_iter(text) {
                let whole = m.get(0).unwrap();
                let lits = literals(text, whole.end());
                let Some((name, help)) = lits.split_first() else {
                    continue;
                };
                // Test-only descriptors (`t_seconds`) are not vmscope's.
                if !name.starts_with("vmscope_") {
                    continue;
                }
                let fam = Family {
                    kind: m[1].to_string(),
                    help: help.concat(),
                    file: rel.clone(),
                };
                assert!(
                    out.insert(name.clone(), fam).is_none(),
                    "{name} is declared twice (second time in {rel})"
                );
            }
        }
    }
    out
}

fn render(families: &BTreeMap<String, Family>) -> String {
    let mut s = String::from(
        "# Metric catalogue\n\n\
         Generated from the code by `crates/vmscope/tests/pure/metrics_doc.rs`: every\n\
         family vmscope can export, with its type and help text. Do not edit by hand;\n\
         regenerate with `UPDATE_DOCS=1 cargo test -p vmscope --test pure metrics_doc`.\n\
         Naming rules and labels: README.md (\"Metrics\") and the `# HELP` lines.\n\
         A family appears in `/metrics` once it has a sample (an empty one costs\n\
         nothing), so some show only when there is something to say (alerts, errors).\n\n\
         | metric | type | help | defined in |\n|---|---|---|---|\n",
    );
    for (name, f) in families {
        let help = f.help.replace('|', "\\|").replace('\n', " ");
        s.push_str(&format!(
            "| `{name}` | {} | {help} | `src/{}` |\n",
            f.kind, f.file
        ));
    }
    s
}

#[test]
fn metrics_doc_is_the_catalogue_of_the_code() {
    let families = declared();
    assert!(
        families.len() > 40,
        "only {} families found",
        families.len()
    );
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let want = render(&families);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&doc_path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md does not match the code; regenerate it with \
         UPDATE_DOCS=1 cargo test -p vmscope --test pure metrics_doc"
    );
}

#[test]
fn metrics_doc_covers_every_family_of_the_golden_exposition() {
    let families = declared();
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/host1.prom"),
    )
    .unwrap();
    let mut seen = 0;
    for line in golden.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let f = families
                .get(name)
                .unwrap_or_else(|| panic!("{name} is exported but not found in the source"));
            assert_eq!(f.kind, kind, "{name}");
            seen += 1;
        }
    }
    assert!(seen > 20, "{seen}");
}
