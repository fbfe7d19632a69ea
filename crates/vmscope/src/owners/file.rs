//! The mapping-file owner source: `[owners.file] path = "..."`, a file the
//! platform's orchestration writes, mapping VMs to owners.
//!
//! Reads: the file (TOML, JSON or CSV, by `format` or the extension), on the
//! source's own thread every `interval`, parsing it only when its size or
//! modification time changed. Emits: an [`OwnerMap`] of its rows. Each row
//! names its VM by exactly one of `id` (UUID or the platform's VM id),
//! `name` or `pid`, and any of `user_id`, `user_name`, `project_id`,
//! `project_name`:
//!
//! ```toml
//! [[vm]]
//! name = "web-1"
//! user_name = "alice"
//! project_id = "p-42"
//! ```
//! JSON: `{"vm": [{...}, ...]}` or a bare array of the same objects. CSV: a
//! header line with those column names, then one row per line (fields may be
//! double-quoted, `""` for a quote).
//!
//! Fails: a file that cannot be read or does not parse as a whole is a
//! failed fetch (`read` / `parse`) and the last good mapping stays: a
//! half-written file never replaces a good one. A row without a VM key, or
//! with two, is skipped and counted in the log, never fatal.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{FetchError, OwnerMap, OwnerSource, OwnersConfig, RunOptions, Source, VmKey};
use crate::model::Owner;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Toml,
    Json,
    Csv,
}

/// `[owners.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The mapping file; the source is off without one.
    pub path: Option<PathBuf>,
    /// By default from the extension (`.toml`, `.json`, `.csv`).
    pub format: Option<Format>,
    /// How often the file is looked at (it is parsed only when it changed).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            format: None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The format to parse with, or an error naming the key.
    pub fn format(&self) -> Result<Option<Format>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if let Some(f) = self.format {
            return Ok(Some(f));
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Some(Format::Toml)),
            Some("json") => Ok(Some(Format::Json)),
            Some("csv") => Ok(Some(Format::Csv)),
            _ => Err(format!(
                "owners.file.format: cannot tell the format of {} from its extension; set format = \"toml\", \"json\" or \"csv\"",
                path.display()
            )),
        }
    }

    /// Checks that `serve` could start the source (for `validate`).
    pub fn validate(&self) -> Result<(), String> {
        self.format()?;
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("owners.file: interval and timeout must be above 0".into());
        }
        Ok(())
    }
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.file;
    let path = c.path.clone()?;
    // `validate` refused a format it cannot tell; this is its fallback.
    let format = c.format().ok().flatten()?;
    Some(Source::Fetched(
        Box::new(MappingFile {
            path,
            format,
            seen: None,
            last: OwnerMap::default(),
        }),
        RunOptions {
            every: c.interval,
            timeout: c.timeout,
        },
    ))
}

struct MappingFile {
    path: PathBuf,
    format: Format,
    /// (size, mtime) of the file last parsed.
    seen: Option<(u64, SystemTime)>,
    last: OwnerMap,
}

impl OwnerSource for MappingFile {
    fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| FetchError::new("read", e))?;
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if self.seen == Some(stamp) {
            return Ok(self.last.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| FetchError::new("read", e))?;
        let (map, skipped) = parse(&text, self.format).map_err(|e| FetchError::new("parse", e))?;
        if skipped > 0 {
            tracing::warn!(path = %self.path.display(), skipped, "owner mapping rows without exactly one of id, name, pid were skipped");
        }
        self.seen = Some(stamp);
        self.last = map.clone();
        Ok(map)
    }
}

/// One row as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    id: Option<String>,
    name: Option<String>,
    pid: Option<u32>,
    user_id: Option<String>,
    user_name: Option<String>,
    project_id: Option<String>,
    project_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    vm: Vec<Row>,
}

/// The rows of a whole file; how many were skipped. An error when the file
/// does not parse as a whole (nothing is taken from a half-written file).
fn parse(text: &str, format: Format) -> Result<(OwnerMap, usize), String> {
    let rows: Vec<Row> = match format {
        Format::Toml => toml::from_str::<Doc>(text).map_err(|e| e.to_string())?.vm,
        Format::Json => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let rows = if v.is_array() {
                v
            } else {
                v.get("vm").cloned().unwrap_or(serde_json::Value::Null)
            };
            serde_json::from_value(rows).map_err(|e| e.to_string())?
        }
        Format::Csv => csv_rows(text)?,
    };
    let mut map = OwnerMap::default();
    let mut skipped = 0;
    for r in rows {
        let key = match (r.id, r.name, r.pid) {
            (Some(id), None, None) if !id.trim().is_empty() => VmKey::Id(id.trim().to_owned()),
            (None, Some(name), None) if !name.is_empty() => VmKey::Name(name),
            (None, None, Some(pid)) => VmKey::Pid(pid),
            _ => {
                skipped += 1;
                continue;
            }
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let owner = Owner {
            user_id: nonempty(r.user_id),
            user_name: nonempty(r.user_name),
            project_id: nonempty(r.project_id),
            project_name: nonempty(r.project_name),
        };
        if owner == Owner::default() {
            skipped += 1;
            continue;
        }
        map.insert(key, owner);
    }
    map.skipped = skipped;
    Ok((map, skipped))
}

/// CSV with a header line naming the columns. The file parses as a whole or
/// not at all: an unknown column, an unterminated quote or a row with the
/// wrong number of fields is an error.
fn csv_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns = csv_fields(header).ok_or("line 1: unterminated quote")?;
    for c in &columns {
        if !COLUMNS.contains(&c.trim()) {
            return Err(format!(
                "line 1: unknown column {c:?} (known: {})",
                COLUMNS.join(", ")
            ));
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let fields = csv_fields(line).ok_or_else(|| format!("line {n}: unterminated quote"))?;
        if fields.len() != columns.len() {
            return Err(format!(
                "line {n}: {} fields, the header has {}",
                fields.len(),
                columns.len()
            ));
        }
        let mut row = Row::default();
        for (c, v) in columns.iter().zip(fields) {
            let v = Some(v).filter(|v| !v.is_empty());
            match c.trim() {
                "id" => row.id = v,
                "name" => row.name = v,
                "pid" => {
                    row.pid = match v {
                        Some(p) => Some(
                            p.trim()
                                .parse()
                                .map_err(|_| format!("line {n}: pid {p:?} is not a number"))?,
                        ),
                        None => None,
                    }
                }
                "user_id" => row.user_id = v,
                "user_name" => row.user_name = v,
                "project_id" => row.project_id = v,
                _ => row.project_name = v,
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

const COLUMNS: &[&str] = &[
    "id",
    "name",
    "pid",
    "user_id",
    "user_name",
    "project_id",
    "project_name",
];

/// One CSV line's fields; `None` for an unterminated quote.
fn csv_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::VmFacts;

    fn facts<'a>(id: &'a str, name: &'a str, pid: u32) -> VmFacts<'a> {
        VmFacts {
            id,
            uuid: None,
            name,
            pid,
            process: None,
            libvirt: None,
        }
    }

    fn user(map: &OwnerMap, f: VmFacts<'_>) -> Option<String> {
        map.lookup(&f)
            .and_then(|o| o.user_name.clone().or(o.user_id.clone()))
    }

    #[test]
    fn the_three_formats_give_the_same_rows() {
        let toml = "[[vm]]\nname = \"web-1\"\nuser_name = \"alice\"\n\n[[vm]]\nid = \"AAAA-1\"\nuser_id = \"u-2\"\nproject_name = \"demo\"\n\n[[vm]]\npid = 77\nuser_name = \"carol\"\n";
        let json = r#"{"vm": [{"name": "web-1", "user_name": "alice"}, {"id": "AAAA-1", "user_id": "u-2", "project_name": "demo"}, {"pid": 77, "user_name": "carol"}]}"#;
        let bare = r#"[{"name": "web-1", "user_name": "alice"}, {"id": "AAAA-1", "user_id": "u-2", "project_name": "demo"}, {"pid": 77, "user_name": "carol"}]"#;
        let csv = "name,id,pid,user_id,user_name,project_name\nweb-1,,,,alice,\n,AAAA-1,,u-2,,demo\n,,77,,carol,\n";
        for (text, format) in [
            (toml, Format::Toml),
            (json, Format::Json),
            (bare, Format::Json),
            (csv, Format::Csv),
        ] {
            let (map, skipped) = parse(text, format).unwrap();
            assert_eq!((map.len(), skipped), (3, 0), "{format:?}");
            assert_eq!(user(&map, facts("x", "web-1", 1)).as_deref(), Some("alice"));
            // Ids compare case-insensitively.
            let o = map.lookup(&facts("aaaa-1", "other", 2)).unwrap();
            assert_eq!(o.user_id.as_deref(), Some("u-2"));
            assert_eq!(o.project_name.as_deref(), Some("demo"));
            assert_eq!(user(&map, facts("y", "z", 77)).as_deref(), Some("carol"));
        }
    }

    #[test]
    fn bad_rows_are_skipped_and_counted_a_bad_file_is_an_error() {
        // No key, two keys, a key without owner: skipped; the good row stays.
        let (map, skipped) = parse(
            "[[vm]]\nuser_name = \"a\"\n[[vm]]\nname = \"n\"\npid = 3\nuser_name = \"b\"\n[[vm]]\nname = \"m\"\n[[vm]]\nname = \"ok\"\nuser_name = \"c\"\n",
            Format::Toml,
        )
        .unwrap();
        assert_eq!((map.len(), skipped), (1, 3));
        // A half-written file does not parse as a whole: nothing from it.
        assert!(parse("[[vm]]\nname = \"web-1\"\nuser_na", Format::Toml).is_err());
        assert!(
            parse(
                r#"{"vm": [{"name": "web-1", "user_name": "al"#,
                Format::Json
            )
            .is_err()
        );
        assert!(parse("name,user_name\nweb-1,\"alice\n", Format::Csv).is_err());
        assert!(parse("name,user_name\nweb-1\n", Format::Csv).is_err());
        let e = parse("name,owner\nweb-1,alice\n", Format::Csv).unwrap_err();
        assert!(e.contains("unknown column \"owner\""), "{e}");
        // Unknown keys in TOML/JSON rows are errors too (a typo must not
        // silently drop the owner).
        assert!(parse("[[vm]]\nname = \"a\"\nuser = \"x\"\n", Format::Toml).is_err());
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields(r#"a,"b,c","say ""hi""",,d"#).unwrap(),
            ["a", "b,c", "say \"hi\"", "", "d"]
        );
        assert!(csv_fields(r#"a,"b"#).is_none());
    }

    #[test]
    fn a_changed_file_is_read_again_a_broken_one_keeps_the_last_good_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.toml");
        std::fs::write(&path, "[[vm]]\nname = \"web-1\"\nuser_name = \"alice\"\n").unwrap();
        let mut src = MappingFile {
            path: path.clone(),
            format: Format::Toml,
            seen: None,
            last: OwnerMap::default(),
        };
        let map = src.fetch().unwrap();
        assert_eq!(user(&map, facts("x", "web-1", 1)).as_deref(), Some("alice"));
        // Half-written: the fetch fails (the runner keeps the last map).
        std::fs::write(&path, "[[vm]]\nname = \"web-1\"\nuser_name = \"bo").unwrap();
        let e = src.fetch().unwrap_err();
        assert_eq!(e.kind, "parse");
        // Complete again, with a new owner: taken.
        std::fs::write(&path, "[[vm]]\nname = \"web-1\"\nuser_name = \"bob\"\n").unwrap();
        let map = src.fetch().unwrap();
        assert_eq!(user(&map, facts("x", "web-1", 1)).as_deref(), Some("bob"));
        // Gone: a read error.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(src.fetch().unwrap_err().kind, "read");
    }

    #[test]
    fn the_format_comes_from_the_extension_or_the_key() {
        let c = |p: &str, f: Option<Format>| Config {
            path: Some(PathBuf::from(p)),
            format: f,
            ..Config::default()
        };
        assert_eq!(c("/m.csv", None).format().unwrap(), Some(Format::Csv));
        assert_eq!(
            c("/m", Some(Format::Json)).format().unwrap(),
            Some(Format::Json)
        );
        let e = c("/m.txt", None).format().unwrap_err();
        assert!(e.starts_with("owners.file.format"), "{e}");
        assert_eq!(Config::default().format().unwrap(), None);
    }
}
