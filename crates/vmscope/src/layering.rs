//! The dependency rules between the crate's top-level modules, kept by one
//! test that reads the sources (`src/**/*.rs`) and fails naming the file
//! and the import that breaks a rule. Rules (docs/architecture.md, "Layers"):
//!
//! 1. Each module in [`MAY_IMPORT`] imports only the modules listed for it:
//!    `model`, `host` and `error` nothing of the agent; `discovery` and
//!    `collectors` stand on `host` and `model` (collectors also read their
//!    `config` section), never on each other; the domain modules (`owners`,
//!    `export`, `store`, `alert`) never on `pipeline`, `api`, `server`,
//!    `cli`.
//! 2. Only `api` and `server` (the HTTP edge) name the web framework
//!    (axum, hyper, tower, http-body).
//! 3. Nothing imports `cli`: it is the composition root.
//! 4. No import cycle between top-level modules.
//!
//! What counts as an import: every `crate::x` and every `super::` path
//! that leaves its top-level module, outside comments and outside the
//! `#[cfg(test)] mod` blocks (a test may put together what it needs).
//! [`EXCEPTIONS`] are imports known to break a rule and on their way out;
//! one that no longer occurs fails the test, so the list only shrinks.

/// Top-level module -> the top-level modules it may import. Modules not
/// listed (`config`, `pipeline`, `api`, `server`, `cli`) are held by rules
/// 2 to 4 only.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("model", &[]),
    ("host", &[]),
    ("discovery", &["host", "model"]),
    ("collectors", &["host", "model", "config", "hypervisor"]),
    // hypervisor: API clients and their poller thread (collectors/vm_devices drives it).
    ("hypervisor", &["model"]),
    (
        "owners",
        // outbound: `Secret` and redaction for database URLs and tokens
        &[
            "discovery",
            "model",
            "error",
            "config",
            "export",
            "outbound",
        ],
    ),
    ("export", &["model", "error"]),
    ("outbound", &["error"]),
    // outbound: `Secret` and redaction for the databases' URLs
    ("store", &["export", "model", "error", "outbound"]),
    // ledger: usage rules read its `UsageReader` (the ledger never imports alert).
    (
        "alert",
        &["export", "model", "error", "store", "outbound", "ledger"],
    ),
    (
        "ledger",
        &["export", "model", "error", "store", "host", "outbound"],
    ),
    // push: reads snapshots and metric sources, sends through outbound.
    ("push", &["export", "model", "error", "outbound"]),
    // access: decisions only; the HTTP edge (api) hands requests in.
    ("access", &["export", "error"]),
    // proxy: pure scoping plus the upstream client (outbound's redaction).
    ("proxy", &["model", "error", "outbound"]),
];

/// Modules that may name the web framework's types.
const HTTP_EDGE: &[&str] = &["api", "server"];

const FRAMEWORK_CRATES: &[&str] = &[
    "axum",
    "hyper",
    "hyper_util",
    "tower",
    "tower_http",
    "http_body",
    "http_body_util",
];

/// (file under `src/`, imported top-level module): known breaks of a rule,
/// each on its way out. None today.
const EXCEPTIONS: &[(&str, &str)] = &[];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::{EXCEPTIONS, FRAMEWORK_CRATES, HTTP_EDGE, MAY_IMPORT};

    /// One source file: its path under `src/` and its code without comments
    /// and test modules.
    struct Source {
        rel: String,
        code: String,
    }

    fn sources() -> Vec<Source> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        files
            .into_iter()
            .filter_map(|path| {
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                // main.rs is the binary (`vmscope::`), this file holds the rules.
                if rel == "main.rs" || rel == "layering.rs" {
                    return None;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                Some(Source {
                    code: code_of(&text),
                    rel,
                })
            })
            .collect()
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The text up to its `#[cfg(test)] mod …`, without `//` comments.
    fn code_of(text: &str) -> String {
        let lines: Vec<&str> = text.lines().collect();
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("mod "))
            {
                break;
            }
            let code = match t.find("//") {
                // Keep `"…//…"` in strings (URLs); cut only comment lines
                // and trailing comments after code.
                Some(0) => "",
                Some(at) if !t[..at].contains('"') => &t[..at],
                _ => t,
            };
            out.push_str(code);
            out.push('\n');
        }
        out
    }

    /// The module path of a file: `api/alerts.rs` -> [api, alerts],
    /// `api/mod.rs` -> [api], `lib.rs` -> [].
    fn module_path(rel: &str) -> Vec<String> {
        let mut parts: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_owned)
            .collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        parts
    }

    fn is_ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    /// The identifier at the start of `s`.
    fn ident(s: &str) -> &str {
        let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
        &s[..end]
    }

    /// Byte offsets where `word` starts and is not the tail of an identifier.
    fn occurrences<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
        code.match_indices(word).map(|(i, _)| i).filter(move |&i| {
            code[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !is_ident(c) && c != ':')
        })
    }

    /// The top-level modules `code` (of the file at `module`) imports,
    /// other than its own.
    fn imports(module: &[String], code: &str) -> BTreeSet<String> {
        let Some(own) = module.first() else {
            return BTreeSet::new();
        };
        let mut out = BTreeSet::new();
        for i in occurrences(code, "crate::") {
            out.insert(ident(&code[i + "crate::".len()..]).to_owned());
        }
        for i in occurrences(code, "super::") {
            let mut rest = &code[i..];
            let mut up = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                up += 1;
                rest = r;
            }
            // `super` from the top-level module itself names the crate root.
            if up >= module.len() {
                out.insert(ident(rest).to_owned());
            }
        }
        out.retain(|m| m != own && !m.is_empty());
        out
    }

    /// Every rule broken by `files`, as messages; [`EXCEPTIONS`] are let
    /// through (and reported when they no longer occur).
    fn violations(files: &[Source]) -> Vec<String> {
        let mut broken = Vec::new();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut excepted_seen = BTreeSet::new();
        // Items of lib.rs itself (`crate::BuildInfo`) are no module.
        let modules: BTreeSet<String> = files
            .iter()
            .filter_map(|f| module_path(&f.rel).first().cloned())
            .chain(MAY_IMPORT.iter().map(|(m, _)| (*m).to_owned()))
            .chain(["api", "cli", "server", "config", "pipeline"].map(String::from))
            .collect();
        for f in files {
            let module = module_path(&f.rel);
            let Some(own) = module.first() else { continue };
            for m in imports(&module, &f.code)
                .into_iter()
                .filter(|m| modules.contains(m))
            {
                if EXCEPTIONS.contains(&(f.rel.as_str(), m.as_str())) {
                    excepted_seen.insert((f.rel.clone(), m));
                    continue;
                }
                if m == "cli" {
                    broken.push(format!(
                        "{} imports crate::cli (the composition root)",
                        f.rel
                    ));
                }
                if let Some((_, allowed)) = MAY_IMPORT.iter().find(|(n, _)| n == own)
                    && !allowed.contains(&m.as_str())
                {
                    broken.push(format!(
                        "{} imports crate::{m}; {own} may import only {allowed:?}",
                        f.rel
                    ));
                }
                graph.entry(own.clone()).or_default().insert(m);
            }
            if !HTTP_EDGE.contains(&own.as_str()) {
                for krate in FRAMEWORK_CRATES {
                    let path = format!("{krate}::");
                    if occurrences(&f.code, &path).next().is_some() {
                        broken.push(format!(
                            "{} names {krate}: only {HTTP_EDGE:?} know the web framework",
                            f.rel
                        ));
                    }
                }
            }
        }
        for (file, module) in EXCEPTIONS {
            if !excepted_seen.contains(&((*file).to_owned(), (*module).to_owned())) {
                broken.push(format!(
                    "{file} no longer imports crate::{module}: remove it from layering::EXCEPTIONS"
                ));
            }
        }
        broken.extend(cycles(&graph));
        broken
    }

    /// One message per import cycle found (depth-first, each reported once
    /// from its smallest module).
    fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
        fn visit(
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            found: &mut BTreeSet<Vec<String>>,
        ) {
            let Some(last) = path.last().cloned() else {
                return;
            };
            for next in graph.get(&last).into_iter().flatten() {
                if let Some(at) = path.iter().position(|m| m == next) {
                    let mut cycle = path[at..].to_vec();
                    let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(min);
                    found.insert(cycle);
                } else {
                    path.push(next.clone());
                    visit(graph, path, found);
                    path.pop();
                }
            }
        }
        let mut found = BTreeSet::new();
        for start in graph.keys() {
            visit(graph, &mut vec![start.clone()], &mut found);
        }
        found
            .into_iter()
            .map(|c| format!("import cycle: {} -> {}", c.join(" -> "), c[0]))
            .collect()
    }

    #[test]
    fn the_modules_keep_the_layering_rules() {
        let files = sources();
        assert!(files.len() > 50, "read only {} files", files.len());
        let broken = violations(&files);
        assert!(broken.is_empty(), "{}", broken.join("\n"));
    }

    fn file(rel: &str, code: &str) -> Source {
        Source {
            rel: rel.to_owned(),
            code: code_of(code),
        }
    }

    /// The checker itself: each rule, fed a literal breach, says so.
    #[test]
    fn each_rule_catches_a_breach() {
        // Satisfy the exceptions so that only the breach under test shows.
        let base: Vec<Source> = EXCEPTIONS
            .iter()
            .map(|(f, m)| file(f, &format!("use crate::{m}::X;")))
            .collect();
        let check = |rel: &str, code: &str, want: &str| {
            let mut files: Vec<Source> = base.iter().map(|s| file(&s.rel, &s.code)).collect();
            files.push(file(rel, code));
            let broken = violations(&files);
            assert!(
                broken.iter().any(|b| b.contains(want)),
                "{rel}: {code:?} gave {broken:?}, wanted {want:?}"
            );
        };
        check(
            "collectors/vm_io.rs",
            "use crate::discovery::DiscoveredVm;",
            "collectors may import only",
        );
        check(
            "model.rs",
            "let x = crate::host::Roots::default();",
            "model may import only",
        );
        check(
            "alert/mod.rs",
            "use crate::api::AppState;",
            "alert may import only",
        );
        check(
            "owners/nova.rs",
            "use super::super::api::X;",
            "owners may import only",
        );
        check("store/mod.rs", "fn f() -> axum::Router {}", "names axum");
        check(
            "pipeline/mod.rs",
            "use crate::cli::Failure;",
            "imports crate::cli",
        );
        check(
            "export/mod.rs",
            "use crate::store::Store;",
            "export may import only",
        );
        // config may import api (no rule lists config), but not in a cycle.
        let mut files: Vec<Source> = base.iter().map(|s| file(&s.rel, &s.code)).collect();
        files.push(file("config.rs", "use crate::api::X;"));
        files.push(file("api/mod.rs", "use crate::config::Y;"));
        let broken = violations(&files);
        assert!(
            broken.contains(&"import cycle: api -> config -> api".to_owned()),
            "{broken:?}"
        );
        // Comments and test modules do not count; a stale exception does.
        let files = vec![file(
            "model.rs",
            "// see crate::api\n#[cfg(test)]\nmod tests { use crate::api::X; }",
        )];
        let broken = violations(&files);
        assert_eq!(broken.len(), EXCEPTIONS.len(), "{broken:?}");
        assert!(broken.iter().all(|b| b.contains("remove it from")));
    }
}
