//! PromQL tenant scoping: parse a query (`promql-parser`), add the tenant's
//! label matcher to every vector and matrix selector, print it back, and
//! check the printed query again before it goes anywhere.
//!
//! Reads: a query or a series selector (`match[]`) as text, and a
//! [`TenantMatcher`]. Emits: the rewritten text. Pure: no IO, no clock.
//!
//! Fails ([`ScopeError`], each a 400 with a message that says what to fix):
//! a query over [`MAX_QUERY_BYTES`] or nested deeper than [`MAX_DEPTH`];
//! PromQL the parser refuses (its message); a matcher the user wrote on
//! the tenant label that none of the tenant's values satisfy (a conflict:
//! refused, never silently replaced); `or` inside a selector's braces
//! (not PromQL that Prometheus accepts, and each group would need its own
//! matcher); a node type this module does not know (`Expr::Extension`;
//! and a new variant of the parser's `Expr` fails to compile here, since
//! the walk matches exhaustively). Never passes an unknown shape through,
//! never panics.
//!
//! Why a rewritten query cannot widen: the tenant matcher is *added* to
//! each selector (label matchers intersect), a user matcher on the tenant
//! label is kept next to it (it can only narrow), and the printed query is
//! parsed again and every selector of that second tree must hold the
//! tenant matcher (`verify`), so a printer bug cannot drop it.

use std::fmt;

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr, VectorSelector};
use regex::Regex;

/// Longest query (or `match[]` selector) accepted, in bytes. Grafana's
/// queries are far below it; the bound keeps parsing cheap.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Deepest nesting of brackets, and most operators, accepted in one query:
/// the parse tree is walked recursively (here, in the parser's printer and
/// in its destructor), so its depth is bounded before parsing.
pub const MAX_DEPTH: usize = 512;

/// Why a query was refused. Each message names what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    TooLarge {
        bytes: usize,
    },
    TooDeep,
    Parse(String),
    /// A user matcher on the tenant label that no tenant value satisfies.
    Conflict {
        matcher: String,
    },
    /// `{a="1" or b="2"}`: selector-level `or`.
    OrInSelector,
    /// A node type the scoper does not handle.
    Unsupported(&'static str),
    /// `match[]` must be a series selector, not an expression.
    NotASelector,
    /// The rewritten query lost a tenant matcher (a printer bug; never
    /// forwarded).
    Unverified,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::TooLarge { bytes } => write!(
                f,
                "query: {bytes} bytes is longer than the {MAX_QUERY_BYTES} bytes accepted; shorten it"
            ),
            ScopeError::TooDeep => write!(
                f,
                "query: more than {MAX_DEPTH} nested brackets or operators; simplify it"
            ),
            ScopeError::Parse(m) => write!(f, "query: invalid PromQL: {m}"),
            ScopeError::Conflict { matcher } => write!(
                f,
                "query: the matcher {matcher} selects series outside this token's scope; remove it or match one of the token's owners"
            ),
            ScopeError::OrInSelector => write!(
                f,
                "query: `or` inside a selector's braces is not supported; write two selectors joined by the `or` operator"
            ),
            ScopeError::Unsupported(what) => {
                write!(f, "query: {what} is not supported through the tenant proxy")
            }
            ScopeError::NotASelector => write!(
                f,
                "match[]: must be a series selector such as up{{job=\"x\"}}, not an expression"
            ),
            ScopeError::Unverified => write!(
                f,
                "query: the rewritten query could not be checked; simplify it"
            ),
        }
    }
}

impl std::error::Error for ScopeError {}

/// The one matcher a tenant's queries get: `label="key"` for one key,
/// `label=~"k1|k2"` (keys regex-escaped) for several.
#[derive(Debug, Clone)]
pub struct TenantMatcher {
    label: String,
    values: Vec<String>,
    matcher: Matcher,
}

impl TenantMatcher {
    /// `values` are the label values as exported (owner keys through
    /// `crate::model::usage::series_label`). `None` for an empty set: a
    /// tenant with no keys of this kind has nothing to match.
    pub fn new(label: &str, values: &[String]) -> Option<TenantMatcher> {
        let mut values: Vec<String> = values.to_vec();
        values.sort();
        values.dedup();
        let matcher = match values.as_slice() {
            [] => return None,
            [one] => Matcher::new(MatchOp::Equal, label, one),
            many => {
                let alt = many
                    .iter()
                    .map(|v| regex::escape(v))
                    .collect::<Vec<_>>()
                    .join("|");
                // Anchored as the parser anchors PromQL regexes; escaped
                // literals always compile (a failure means no matcher at
                // all, which the caller refuses).
                let re = Regex::new(&format!("^(?:{alt})$")).ok()?;
                Matcher::new(MatchOp::Re(re), label, &alt)
            }
        };
        Some(TenantMatcher {
            label: label.to_owned(),
            values,
            matcher,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The tenant's label values, sorted.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// True when the series label value `v` belongs to the tenant.
    pub fn admits(&self, v: &str) -> bool {
        self.values.iter().any(|t| t == v)
    }

    /// The matcher as PromQL (`project="acme"`), for `match[]` and docs.
    pub fn promql(&self) -> String {
        self.matcher.to_string()
    }
}

/// Rewrites a PromQL query so that every selector carries the tenant
/// matcher. Label-free queries (`1+1`, `vector(1)`, `time()`) come back
/// unchanged in meaning.
pub fn scope_query(query: &str, tenant: &TenantMatcher) -> Result<String, ScopeError> {
    let mut expr = parse_bounded(query)?;
    add_to(&mut expr, tenant)?;
    let out = expr.to_string();
    verify(&out, tenant)?;
    Ok(out)
}

/// Rewrites one `match[]` series selector (`/series`, `/labels`,
/// `/label/{name}/values`).
pub fn scope_selector(selector: &str, tenant: &TenantMatcher) -> Result<String, ScopeError> {
    let mut expr = parse_bounded(selector)?;
    if !matches!(expr, Expr::VectorSelector(_)) {
        return Err(ScopeError::NotASelector);
    }
    add_to(&mut expr, tenant)?;
    let out = expr.to_string();
    verify(&out, tenant)?;
    Ok(out)
}

/// Checks an unscoped query parses (admin callers: the parser's message
/// is a better 400 than a round trip to Prometheus). Returns nothing: the
/// query is forwarded as the user wrote it.
pub fn check_query(query: &str) -> Result<(), ScopeError> {
    parse_bounded(query).map(drop)
}

fn parse_bounded(query: &str) -> Result<Expr, ScopeError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ScopeError::TooLarge { bytes: query.len() });
    }
    if nesting(query) > MAX_DEPTH {
        return Err(ScopeError::TooDeep);
    }
    parser::parse(query).map_err(|m| ScopeError::Parse(cut(m)))
}

/// The parser's message, cut to a readable length.
fn cut(m: String) -> String {
    if m.chars().count() <= 300 {
        m
    } else {
        let mut s: String = m.chars().take(300).collect();
        s.push('…');
        s
    }
}

/// An upper bound of the parse tree's depth: open brackets plus operator
/// characters outside string literals (a chain `1+1+1…` nests as deep as
/// it has operators), plus words (`and`, `or`, `unless`, function names).
fn nesting(q: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut ops = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut in_word = false;
    for c in q.chars() {
        if let Some(qc) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && qc != '`' {
                escaped = true;
            } else if c == qc {
                quote = None;
            }
            continue;
        }
        let word = c.is_alphanumeric() || c == '_' || c == ':';
        if word && !in_word {
            ops += 1;
        }
        in_word = word;
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '@' | ',' => ops += 1,
            _ => {}
        }
    }
    max.max(ops / 2)
}

/// Adds the tenant matcher to every selector under `e`.
fn add_to(e: &mut Expr, t: &TenantMatcher) -> Result<(), ScopeError> {
    match e {
        Expr::Aggregate(a) => {
            if let Some(p) = a.param.as_mut() {
                add_to(p, t)?;
            }
            add_to(&mut a.expr, t)
        }
        Expr::Unary(u) => add_to(&mut u.expr, t),
        Expr::Binary(b) => {
            add_to(&mut b.lhs, t)?;
            add_to(&mut b.rhs, t)
        }
        Expr::Paren(p) => add_to(&mut p.expr, t),
        Expr::Subquery(s) => add_to(&mut s.expr, t),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(vs) => add_to_selector(vs, t),
        Expr::MatrixSelector(ms) => add_to_selector(&mut ms.vs, t),
        Expr::Call(c) => {
            for a in c.args.args.iter_mut() {
                add_to(a, t)?;
            }
            Ok(())
        }
        Expr::Extension(_) => Err(ScopeError::Unsupported("an extension expression")),
    }
}

fn add_to_selector(vs: &mut VectorSelector, t: &TenantMatcher) -> Result<(), ScopeError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(ScopeError::OrInSelector);
    }
    for m in &vs.matchers.matchers {
        // A user matcher on the tenant label narrows within the tenant's
        // values (kept: matchers intersect) or selects none of them (a
        // conflict the user should hear about, not an empty answer).
        if m.name == t.label && !t.values.iter().any(|v| m.is_match(v)) {
            return Err(ScopeError::Conflict {
                matcher: m.to_string(),
            });
        }
    }
    let matchers = std::mem::replace(&mut vs.matchers, Matchers::empty());
    vs.matchers = matchers.append(t.matcher.clone());
    Ok(())
}

/// Parses the printed query again: every selector must hold the tenant
/// matcher, or nothing is forwarded.
fn verify(printed: &str, t: &TenantMatcher) -> Result<(), ScopeError> {
    let e = parser::parse(printed).map_err(|_| ScopeError::Unverified)?;
    if holds(&e, t) {
        Ok(())
    } else {
        Err(ScopeError::Unverified)
    }
}

fn holds(e: &Expr, t: &TenantMatcher) -> bool {
    let has = |vs: &VectorSelector| {
        vs.matchers.or_matchers.is_empty()
            && vs.matchers.matchers.iter().any(|m| {
                m.name == t.matcher.name && m.op == t.matcher.op && m.value == t.matcher.value
            })
    };
    match e {
        Expr::Aggregate(a) => a.param.as_deref().is_none_or(|p| holds(p, t)) && holds(&a.expr, t),
        Expr::Unary(u) => holds(&u.expr, t),
        Expr::Binary(b) => holds(&b.lhs, t) && holds(&b.rhs, t),
        Expr::Paren(p) => holds(&p.expr, t),
        Expr::Subquery(s) => holds(&s.expr, t),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::VectorSelector(vs) => has(vs),
        Expr::MatrixSelector(ms) => has(&ms.vs),
        Expr::Call(c) => c.args.args.iter().all(|a| holds(a, t)),
        Expr::Extension(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantMatcher {
        TenantMatcher::new("project", &["acme".to_owned()]).unwrap()
    }

    fn scoped(q: &str) -> String {
        scope_query(q, &acme()).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    #[test]
    fn every_selector_gets_the_matcher() {
        for (q, want) in [
            ("up", r#"up{project="acme"}"#),
            (
                r#"rate(vmscope_vm_cpu_seconds_total{mode="user"}[5m])"#,
                r#"rate(vmscope_vm_cpu_seconds_total{mode="user",project="acme"}[5m])"#,
            ),
            (
                "sum by (vm_id) (a) / on(vm_id) group_left b",
                r#"sum by (vm_id) (a{project="acme"}) / on (vm_id) group_left () b{project="acme"}"#,
            ),
            (
                "a or b unless c",
                r#"a{project="acme"} or b{project="acme"} unless c{project="acme"}"#,
            ),
            (
                "max_over_time(rate(x[1m])[10m:30s] offset 1h)",
                r#"max_over_time(rate(x{project="acme"}[1m])[10m:30s] offset 1h)"#,
            ),
            (
                "x @ 1700000000 offset 5m",
                r#"x{project="acme"} @ 1700000000.000 offset 5m"#,
            ),
            (
                r#"{__name__=~"vmscope_vm_.+"}"#,
                r#"{__name__=~"vmscope_vm_.+",project="acme"}"#,
            ),
            (
                "topk(scalar(count(a)), b)",
                r#"topk(scalar(count(a{project="acme"})), b{project="acme"})"#,
            ),
            (
                r#"label_replace(a, "dst", "$1", "src", "(.*)")"#,
                r#"label_replace(a{project="acme"}, "dst", "$1", "src", "(.*)")"#,
            ),
            (
                r#"count_values("v", a)"#,
                r#"count_values("v", a{project="acme"})"#,
            ),
        ] {
            assert_eq!(scoped(q), want, "{q}");
        }
    }

    #[test]
    fn label_free_queries_pass() {
        for q in ["1+1", "vector(1)", "time()", r#""x""#, "-2 * 3"] {
            let out = scoped(q);
            assert!(!out.contains("acme"), "{q} -> {out}");
        }
    }

    #[test]
    fn several_keys_make_one_escaped_regex() {
        let t = TenantMatcher::new(
            "project",
            &["beta".to_owned(), "a.c|me".to_owned(), "beta".to_owned()],
        )
        .unwrap();
        assert_eq!(t.promql(), r#"project=~"a\\.c\\|me|beta""#);
        let out = scope_query("up", &t).unwrap();
        assert_eq!(out, r#"up{project=~"a\\.c\\|me|beta"}"#);
        // The printed regex matches exactly the two keys.
        let e = parser::parse(&out).unwrap();
        let Expr::VectorSelector(vs) = e else {
            panic!("{out}")
        };
        let m = vs.matchers.find_matchers("project").remove(0);
        assert!(m.is_match("a.c|me") && m.is_match("beta"));
        assert!(!m.is_match("abcxme") && !m.is_match("a") && !m.is_match("betax"));
        assert!(TenantMatcher::new("project", &[]).is_none());
    }

    #[test]
    fn user_matchers_on_the_tenant_label() {
        // Narrowing within the tenant is kept next to the tenant matcher.
        assert_eq!(
            scoped(r#"up{project="acme"}"#),
            r#"up{project="acme",project="acme"}"#
        );
        assert_eq!(
            scoped(r#"up{project=~"ac.*"}"#),
            r#"up{project="acme",project=~"ac.*"}"#
        );
        // Anything that selects none of its values is a conflict.
        for q in [
            r#"up{project="beta"}"#,
            r#"up{project!="acme"}"#,
            r#"sum(rate(x{project=~"b.*"}[1m]))"#,
            r#"a or b{project=""}"#,
        ] {
            let e = scope_query(q, &acme()).unwrap_err();
            assert!(matches!(e, ScopeError::Conflict { .. }), "{q}: {e:?}");
            assert!(e.to_string().contains("outside this token's scope"), "{e}");
        }
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let e = scope_query("sum(", &acme()).unwrap_err();
        assert!(matches!(e, ScopeError::Parse(_)));
        assert!(e.to_string().starts_with("query: invalid PromQL: "), "{e}");
        let big = format!("up{{x=\"{}\"}}", "a".repeat(MAX_QUERY_BYTES));
        assert!(matches!(
            scope_query(&big, &acme()),
            Err(ScopeError::TooLarge { .. })
        ));
        let deep = format!("{}1{}", "(".repeat(600), ")".repeat(600));
        assert_eq!(scope_query(&deep, &acme()), Err(ScopeError::TooDeep));
        let chain = vec!["1"; 2000].join("+");
        assert_eq!(scope_query(&chain, &acme()), Err(ScopeError::TooDeep));
        // Brackets inside strings do not count.
        let q = format!("up{{x=\"{}\"}}", "(".repeat(2000));
        assert!(scope_query(&q, &acme()).is_ok());
        assert_eq!(
            scope_selector("rate(up[1m])", &acme()),
            Err(ScopeError::NotASelector)
        );
        assert_eq!(
            scope_selector(r#"{job="a"}"#, &acme()).unwrap(),
            r#"{job="a",project="acme"}"#
        );
    }

    #[test]
    fn strings_with_quotes_and_unicode_round_trip() {
        let out = scoped(r#"up{vm_name="a\"b}\\ é"}"#);
        // (The printer sorts matchers.)
        assert_eq!(out, r#"up{project="acme",vm_name="a\"b}\\ é"}"#);
    }

    #[test]
    fn the_deepest_accepted_query_does_not_overflow_a_small_stack() {
        // Tokio's blocking threads have 2 MiB of stack; run on less.
        let q = format!("{}up{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        let chain = vec!["up"; MAX_DEPTH].join(" + ");
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                assert!(scope_query(&q, &acme()).is_ok());
                assert!(scope_query(&chain, &acme()).is_ok());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    // In place of a cargo-fuzz target (the fuzz crate builds vmscope-proc
    // alone; this module would bring the whole agent): arbitrary text from
    // PromQL's alphabet never panics the scoper, and whatever it accepts
    // holds the matcher in every selector of the re-parsed answer.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn arbitrary_text_never_panics_and_accepted_text_is_scoped(
            q in "[a-z_(){}\\[\\]\"=~!,+*/^ 0-9:@.-]{0,80}"
        ) {
            let t = acme();
            if let Ok(out) = scope_query(&q, &t) {
                let e = parser::parse(&out).unwrap();
                proptest::prop_assert!(holds(&e, &t), "{} -> {}", q, out);
            }
            let _ = scope_selector(&q, &t);
        }
    }
}
