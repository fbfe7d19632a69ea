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
    bounded(query)?;
    let masked = mask_regexes(query, &tenant.label);
    let mut expr = parse(&masked.text)?;
    add_to(&mut expr, tenant)?;
    let out = expr.to_string();
    verify(&out, tenant, masked.originals.len())?;
    masked.unmask(out)
}

/// Rewrites one `match[]` series selector (`/series`, `/labels`,
/// `/label/{name}/values`).
pub fn scope_selector(selector: &str, tenant: &TenantMatcher) -> Result<String, ScopeError> {
    bounded(selector)?;
    let masked = mask_regexes(selector, &tenant.label);
    let mut expr = parse(&masked.text)?;
    if !matches!(expr, Expr::VectorSelector(_)) {
        return Err(ScopeError::NotASelector);
    }
    add_to(&mut expr, tenant)?;
    let out = expr.to_string();
    verify(&out, tenant, masked.originals.len())?;
    masked.unmask(out)
}

/// Checks an unscoped query parses (admin callers: the parser's message
/// is a better 400 than a round trip to Prometheus). Returns nothing: the
/// query is forwarded as the user wrote it.
pub fn check_query(query: &str) -> Result<(), ScopeError> {
    bounded(query)?;
    // No tenant label: every regex may be masked (validated, not compiled).
    parse(&mask_regexes(query, "").text).map(drop)
}

/// The size and depth bounds, checked before anything is parsed.
fn bounded(query: &str) -> Result<(), ScopeError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ScopeError::TooLarge { bytes: query.len() });
    }
    if nesting(query) > MAX_DEPTH {
        return Err(ScopeError::TooDeep);
    }
    Ok(())
}

fn parse(query: &str) -> Result<Expr, ScopeError> {
    parser::parse(query).map_err(|m| ScopeError::Parse(cut(m)))
}

/// Prefix of the placeholders that stand for regex matcher values while a
/// query is scoped. A query that contains it is scoped unmasked.
const MASK: &str = "vmscope_re_";

/// A query whose regex matcher values are swapped for placeholders.
///
/// Why: `promql-parser` compiles every `=~`/`!~` value into a
/// `regex::Regex` while it parses (about 0.1 ms each), and the scoper
/// parses twice (to rewrite, then to check the printed text). Measured on
/// a 4 KiB dashboard query with 50 regex matchers: 9 ms to parse it, 0.46
/// ms with the regexes taken out, so 95% of the proxy's rewrite was
/// compiling regexes that vmscope never runs (Prometheus matches them).
/// The scoper needs a compiled regex only on the tenant's own label (the
/// conflict check in [`add_to_selector`]): those are never masked.
///
/// How: `job=~"a.*"` is parsed as `job="vmscope_re_0"` (an equality,
/// which compiles nothing), and `!~` as `!=`; after the rewrite and its
/// check, the operator and the original token are put back.
///
/// Why it cannot change what is forwarded: a placeholder replaces one
/// whole string token by another and the operator by its equality twin,
/// so the tree that is rewritten and verified has the shape of the query
/// that goes out (only these matchers' operators and values differ, and
/// each placeholder is checked to be exactly one matcher's whole value in
/// the re-parsed tree). The token boundaries are Prometheus' own (quotes,
/// backslash escapes, line comments), and a value is masked only when
/// `unquote_string` (the parser's unescaper) accepts it and
/// `regex-syntax` parses it as the parser would compile it (`^(?:v)$`),
/// so a bad regex is still refused here with a message. Whatever the
/// scanner is unsure of (a label that is not a plain name, `__name__`,
/// the placeholder prefix already in the query) stays unmasked: slower,
/// never different.
struct Masked {
    text: String,
    /// Per placeholder `i` (`name="vmscope_re_<i>"` for `=~`,
    /// `name!="vmscope_re_<i>"` for `!~`): whether it was `!~`, and the
    /// original string token, quotes included.
    originals: Vec<(bool, String)>,
}

impl Masked {
    /// `printed` with each placeholder replaced by its original token.
    /// Every placeholder must appear exactly once (the printer keeps every
    /// matcher); otherwise the query is refused, never forwarded masked.
    fn unmask(&self, printed: String) -> Result<String, ScopeError> {
        if self.originals.is_empty() {
            return Ok(printed);
        }
        let quoted = format!("\"{MASK}");
        let mut out = String::with_capacity(printed.len() + self.text.len());
        let mut seen = vec![false; self.originals.len()];
        let mut rest = printed.as_str();
        while let Some(at) = rest.find(&quoted) {
            out.push_str(&rest[..at]);
            let tail = &rest[at + quoted.len()..];
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            let index: Option<usize> = tail[..digits].parse().ok();
            match (index, tail.as_bytes().get(digits)) {
                (Some(i), Some(b'"')) if i < seen.len() && !seen[i] => {
                    // The printer wrote `name="…"` or `name!="…"`: the
                    // regex operator goes back with the value.
                    let (negated, token) = &self.originals[i];
                    let op = if *negated { "!=" } else { "=" };
                    let Some(head) = out.strip_suffix(op) else {
                        return Err(ScopeError::Unverified);
                    };
                    if !*negated && head.ends_with('!') {
                        return Err(ScopeError::Unverified);
                    }
                    out.truncate(head.len());
                    out.push_str(if *negated { "!~" } else { "=~" });
                    seen[i] = true;
                    out.push_str(token);
                    rest = &tail[digits + 1..];
                }
                _ => return Err(ScopeError::Unverified),
            }
        }
        out.push_str(rest);
        if seen.iter().all(|s| *s) {
            Ok(out)
        } else {
            Err(ScopeError::Unverified)
        }
    }
}

/// Swaps the values of regex matchers (`=~`, `!~`) on labels other than
/// `keep` for placeholders. See [`Masked`].
fn mask_regexes(q: &str, keep: &str) -> Masked {
    let unmasked = || Masked {
        text: q.to_owned(),
        originals: Vec::new(),
    };
    if q.contains(MASK) || !(q.contains("=~") || q.contains("!~")) {
        return unmasked();
    }
    let b = q.as_bytes();
    let mut out = String::with_capacity(q.len());
    let mut originals = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => match string_end(b, i) {
                Some(end) => i = end,
                // Unterminated: the parser will say so.
                None => return unmasked(),
            },
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'=' | b'!' if b.get(i + 1) == Some(&b'~') => {
                let mut j = i + 2;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let Some(end) = b
                    .get(j)
                    .filter(|c| matches!(c, b'"' | b'\'' | b'`'))
                    .and_then(|_| string_end(b, j))
                else {
                    i += 2;
                    continue;
                };
                let token = &q[j..end];
                // `__name__` is left alone: an equality on it is printed
                // as the selector's name, not as a matcher.
                let maskable = label_before(q, i).is_some_and(|l| l != keep && l != "__name__")
                    && escapes_are_plain(token)
                    && promql_parser::util::unquote_string(token).is_ok_and(|v| valid_regex(&v));
                if maskable {
                    let negated = b[i] == b'!';
                    out.push_str(&q[copied..i]);
                    out.push_str(if negated { "!=\"" } else { "=\"" });
                    out.push_str(MASK);
                    out.push_str(&originals.len().to_string());
                    out.push('"');
                    originals.push((negated, token.to_owned()));
                    copied = end;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&q[copied..]);
    Masked {
        text: out,
        originals,
    }
}

/// The index just past the string token that starts at `start` (a quote),
/// as PromQL's lexer ends it: backslash escapes one character in `"` and
/// `'` strings, nothing in raw `` ` `` strings. `None` if unterminated.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// True when every backslash in a quoted token escapes one ASCII
/// character that PromQL's lexer accepts there. `unquote_string` is only
/// ever given such tokens: it slices after the escaped byte and panics on
/// a multi-byte character there (the parser's lexer refuses those first;
/// this scanner leaves them to it, unmasked).
fn escapes_are_plain(token: &str) -> bool {
    let b = token.as_bytes();
    if b.first() == Some(&b'`') {
        // Raw in Prometheus, but `promql-parser`'s lexer refuses a
        // backslash in them: leave those to it, so masked and unmasked
        // scoping accept the same queries.
        return !b.contains(&b'\\');
    }
    let mut i = 1;
    while i + 1 < b.len() {
        if b[i] == b'\\' {
            if !(b[i + 1] == b[0] || br"abfnrtv\01234567xuU".contains(&b[i + 1])) {
                return false;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    true
}

/// The plain label name written just before the matcher operator at
/// `op` (`{job=~`, `, job =~`), or `None` for anything else (a quoted
/// label name, which is left unmasked).
fn label_before(q: &str, op: usize) -> Option<&str> {
    let head = q[..op].trim_end();
    let name_len = head
        .bytes()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count();
    let (before, name) = head.split_at(head.len() - name_len);
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
    let opens = matches!(before.trim_end().as_bytes().last(), Some(b'{' | b','));
    (starts_well && opens).then_some(name)
}

/// True when `v` is a regex the parser would accept, checked by parsing
/// its syntax only (no compilation): as `promql-parser` anchors it.
fn valid_regex(v: &str) -> bool {
    regex_syntax::Parser::new()
        .parse(&format!("^(?:{v})$"))
        .is_ok()
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
/// matcher, and each of the `masks` placeholders must be the whole value
/// of one (equality) matcher, once (so putting the original tokens back
/// changes matcher values and nothing else), or nothing is forwarded.
fn verify(printed: &str, t: &TenantMatcher, masks: usize) -> Result<(), ScopeError> {
    let e = parser::parse(printed).map_err(|_| ScopeError::Unverified)?;
    let mut seen = vec![false; masks];
    // (Unmasked, the query may hold the prefix itself: nothing to check.)
    let placed = masks == 0 || (masks_in_place(&e, &mut seen) && seen.iter().all(|s| *s));
    if holds(&e, t) && placed {
        Ok(())
    } else {
        Err(ScopeError::Unverified)
    }
}

/// False when a placeholder is anywhere but a matcher's whole value
/// (inside another string, say, had the scanner and the parser disagreed
/// on where a string ends), or appears twice. Marks the ones found.
fn masks_in_place(e: &Expr, seen: &mut [bool]) -> bool {
    let selector = |vs: &VectorSelector, seen: &mut [bool]| {
        let names_ok = vs.name.as_deref().is_none_or(|n| !n.contains(MASK));
        let all = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        let mut ok = names_ok;
        for m in all {
            if m.name.contains(MASK) {
                ok = false;
            } else if m.value.contains(MASK) {
                let index = m
                    .value
                    .strip_prefix(MASK)
                    .and_then(|i| i.parse::<usize>().ok());
                match (&m.op, index) {
                    (MatchOp::Equal | MatchOp::NotEqual, Some(i)) if i < seen.len() && !seen[i] => {
                        seen[i] = true
                    }
                    _ => ok = false,
                }
            }
        }
        ok
    };
    match e {
        Expr::Aggregate(a) => {
            a.param.as_deref().is_none_or(|p| masks_in_place(p, seen))
                && masks_in_place(&a.expr, seen)
        }
        Expr::Unary(u) => masks_in_place(&u.expr, seen),
        Expr::Binary(b) => masks_in_place(&b.lhs, seen) && masks_in_place(&b.rhs, seen),
        Expr::Paren(p) => masks_in_place(&p.expr, seen),
        Expr::Subquery(s) => masks_in_place(&s.expr, seen),
        Expr::NumberLiteral(_) => true,
        Expr::StringLiteral(s) => !s.val.contains(MASK),
        Expr::VectorSelector(vs) => selector(vs, seen),
        Expr::MatrixSelector(ms) => selector(&ms.vs, seen),
        Expr::Call(c) => c.args.args.iter().all(|a| masks_in_place(a, seen)),
        Expr::Extension(_) => false,
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

    /// The scoper without regex masking (what it did before masking).
    fn scoped_unmasked(q: &str, t: &TenantMatcher) -> Result<String, ScopeError> {
        bounded(q)?;
        let mut expr = parse(q)?;
        add_to(&mut expr, t)?;
        Ok(expr.to_string())
    }

    /// Both answers, parsed and printed: the same tree means the same
    /// query for Prometheus, whatever quoting each kept.
    fn same_meaning(q: &str) {
        let t = acme();
        let masked = scope_query(q, &t);
        let plain = scoped_unmasked(q, &t);
        match (&masked, &plain) {
            (Ok(m), Ok(p)) => {
                let m = parser::parse(m).unwrap_or_else(|e| panic!("{q} -> {m}: {e}"));
                let p = parser::parse(p).unwrap();
                assert_eq!(m.to_string(), p.to_string(), "{q}");
                assert!(holds(&m, &t), "{q}");
            }
            (Err(m), Err(p)) => {
                assert_eq!(
                    std::mem::discriminant(m),
                    std::mem::discriminant(p),
                    "{q}: {m} vs {p}"
                )
            }
            _ => panic!("{q}: masked {masked:?}, unmasked {plain:?}"),
        }
    }

    #[test]
    fn masking_regexes_changes_nothing_prometheus_sees() {
        for q in [
            r#"rate(x{job=~"prom.*", instance!~'a\\.b|c'}[5m])"#,
            r#"x{job =~ `raw.+"'`}"#,
            r#"{__name__=~"vmscope_.+", le!~"\\+Inf"}"#,
            "up # a comment with \"=~\" and 'quotes'\n + x{a=~\"b\"}",
            r#"x{a=~"é|ü"} or y{b!~".*"} unless z{c=~"x\"y"}"#,
            r#"label_replace(x{a=~"(.*)"}, "d", "$1", "a", "(.*)")"#,
            r#"x{a=~"vmscope_re_0"}"#,
            r#"x{"quoted"=~"a.*"}"#,
            // Refusals keep their kind.
            r#"x{a=~"("}"#,
            r#"x{project=~"b.*"}"#,
            r#"x{project=~"ac.*", job=~"j"}"#,
            r#"x{a=~"unterminated}"#,
            r#"x{a=~}"#,
        ] {
            same_meaning(q);
        }
        // The tenant label's regexes stay real: a conflict is found.
        assert!(matches!(
            scope_query(r#"x{job=~"a", project=~"b.*"}"#, &acme()),
            Err(ScopeError::Conflict { .. })
        ));
        // An invalid regex is still this scoper's 400 with a message.
        let e = scope_query(r#"x{a=~"("}"#, &acme()).unwrap_err();
        assert!(e.to_string().starts_with("query: invalid PromQL: "), "{e}");
    }

    #[test]
    fn masking_is_only_what_the_scanner_is_sure_of() {
        let m = mask_regexes(r#"x{a=~"1", "b"=~"2", project=~"3"} # c=~"4""#, "project");
        assert_eq!(
            m.text,
            r#"x{a="vmscope_re_0", "b"=~"2", project=~"3"} # c=~"4""#
        );
        assert_eq!(m.originals, [(false, r#""1""#.to_owned())]);
        // A placeholder the printer lost, doubled or wrote under another
        // operator is never forwarded.
        assert_eq!(m.unmask("x".into()), Err(ScopeError::Unverified));
        assert_eq!(
            m.unmask(r#"x{a="vmscope_re_0",b="vmscope_re_0"}"#.into()),
            Err(ScopeError::Unverified)
        );
        assert_eq!(
            m.unmask(r#"x{a!="vmscope_re_0"}"#.into()),
            Err(ScopeError::Unverified)
        );
        assert_eq!(
            m.unmask(r#"x{a="vmscope_re_0"}"#.into()).unwrap(),
            r#"x{a=~"1"}"#
        );
        let m = mask_regexes(r#"x{a!~'1', __name__=~"y"}"#, "project");
        assert_eq!(m.text, r#"x{a!="vmscope_re_0", __name__=~"y"}"#);
        assert_eq!(
            m.unmask(r#"x{a!="vmscope_re_0"}"#.into()).unwrap(),
            "x{a!~'1'}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn masked_and_unmasked_scoping_agree(
            sels in proptest::collection::vec(
                (
                    "[a-z]{1,6}",
                    proptest::sample::select(vec!["=~", "!~", "=", "!="]),
                    proptest::sample::select(vec!["\"", "'", "`"]),
                    "[a-z.*|()\\\\+?\\[\\]{}, é#\"'`]{0,12}",
                    proptest::sample::select(vec![" or ", " and ", " / on() ", " unless "]),
                ),
                1..5,
            )
        ) {
            let mut q = String::new();
            for (i, (label, op, quote, value, join)) in sels.iter().enumerate() {
                if i > 0 {
                    q.push_str(join);
                }
                q.push_str(&format!("sum(rate(m{i}{{{label}{op}{quote}{value}{quote}}}[1m]))"));
            }
            same_meaning(&q);
        }
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
