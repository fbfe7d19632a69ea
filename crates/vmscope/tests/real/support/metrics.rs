//! Parses Prometheus text exposition (0.0.4, and the sample lines of
//! OpenMetrics) into samples, so tests can find one by name and labels.
//! Comment lines (`# HELP`, `# TYPE`, `# EOF`) are skipped; a malformed
//! sample line is an error naming the line, since the agent must never emit one.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// True when every `(name, value)` pair is among this sample's labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// All samples of one exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample =
                parse_line(line).map_err(|e| format!("metrics line {}: {e}: {line:?}", i + 1))?;
            samples.push(sample);
        }
        Ok(Exposition { samples })
    }

    /// Every sample called `name` carrying all of `labels`.
    pub fn all(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .collect()
    }

    /// The value of the one sample called `name` with `labels`; `None` if
    /// there is none. Panics if several match (the test asked ambiguously or
    /// the agent duplicated a series).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.all(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value)?;
    // An optional timestamp may follow; anything after it is malformed.
    if fields.nth(1).is_some() {
        return Err("trailing fields after value and timestamp".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` (after the opening brace); returns the labels and
/// the text after the closing brace.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".to_owned()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("duplicate label {key:?}"));
        }
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after label value".to_owned());
        }
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

/// The value of the one sample whose line is `series` (name and labels,
/// written exactly as the exposition writes them) and a value.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` over `body`: its exit status (0 clean, 3 lint
/// findings only, 1 a parse error) and what it printed. Panics when
/// promtool cannot run: `scripts/install-deps.sh` installs it with the lab.
pub fn promtool_check(body: &str) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// [`promtool_check`] finds nothing: no parse error, no lint finding.
pub fn assert_promtool_clean(body: &str) {
    let (code, text) = promtool_check(body);
    assert_eq!(code, Some(0), "promtool check metrics: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_specials() {
        let text = "# HELP x y\n# TYPE a counter\n\
            a_total{vm_id=\"u1\",vm_name=\"we\\\"ird, {name}\\\\\",mode=\"user\"} 12.5\n\
            b 3 1700000000000\n\
            c{} +Inf\n";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.samples.len(), 3);
        assert_eq!(
            e.value("a_total", &[("vm_id", "u1"), ("mode", "user")]),
            Some(12.5)
        );
        assert_eq!(e.samples[0].label("vm_name"), Some("we\"ird, {name}\\"));
        assert_eq!(e.value("b", &[]), Some(3.0));
        assert_eq!(e.value("c", &[]), Some(f64::INFINITY));
        assert_eq!(e.value("a_total", &[("mode", "system")]), None);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "a{x=\"1\" 2",
            "a{x=1} 2",
            "a",
            "a{x=\"1\"} notanumber",
            "a 1 2 3",
        ] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
