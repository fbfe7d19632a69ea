//! The mapping-file owner source: `[owners.file] path = "..."`, a file the
//! platform's orchestration writes, mapping VMs to owners.
//!
//! Reads: the file (TOML, JSON or CSV, by `format` or the extension), on the
//! source's own thread every `interval`: a `stat`, and the file itself only
//! when the stat says it may have changed (see "Unchanged" below). Emits: an [`OwnerMap`] of its rows. Each row
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
//! Unchanged: a refresh answers [`Fetched::Unchanged`] (no read, no map
//! built, nothing published) when the file's stat (device, inode, size,
//! mtime and ctime, to the nanosecond) is the one of the last parse, and
//! that parse's map is the one the readers hold. ctime is in the stamp
//! because no writer can set it: a rewrite that restores the old mtime
//! (`touch -r`, `cp -p`, `rsync -t` in place) still moves it; the inode
//! catches an atomic rename of a new file. A stamp is only trusted once it
//! is [`RACY`] old when taken (git's "racily clean" rule): a rewrite of the
//! same size within the same timestamp tick as the previous write (coarse
//! filesystem clocks tick in milliseconds, FAT's in 2 s) cannot be told
//! from the stat, so while the file is that young each refresh reads it and
//! compares a hash of its bytes instead (a few ms for a 5 MB file), still
//! without parsing when the bytes are the same. As a safety net against a
//! clock that misbehaves (an NFS server whose clock lags), the bytes are
//! also hashed at least every [`REVERIFY`].
//!
//! Fails: a file that cannot be read or does not parse as a whole is a
//! failed fetch (`read` / `parse`) and the last good mapping stays: a
//! half-written file never replaces a good one. A row without a VM key, or
//! with two, is skipped and counted in the log, never fatal.

use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::{FetchError, Fetched, OwnerMap, OwnerSource, OwnersConfig, RunOptions, Source, VmKey};
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
        Box::new(MappingFile::new(path, format)),
        RunOptions {
            every: c.interval,
            timeout: c.timeout,
        },
    ))
}

/// A stat of the file younger than this when taken is not trusted to show
/// the next rewrite: see the module doc.
pub const RACY: Duration = Duration::from_secs(2);

/// The bytes are hashed at least this often even when the stat is trusted.
pub const REVERIFY: Duration = Duration::from_secs(300);

struct MappingFile {
    path: PathBuf,
    format: Format,
    /// What the last successful parse saw.
    seen: Option<Seen>,
    /// [`RACY`]; a field so that tests can trust a file they just wrote.
    racy: Duration,
    /// Parses so far (for the tests: an unchanged file is not parsed).
    parses: u64,
    /// Reads of the file's bytes so far (likewise).
    reads: u64,
}

/// The file as last parsed.
struct Seen {
    stamp: Stamp,
    /// The stamp was at least [`RACY`] old when taken.
    trusted: bool,
    /// When the bytes were last hashed.
    verified: Instant,
    /// Hash of the bytes parsed.
    bytes: u64,
    /// [`OwnerMap::version`] of the map they gave.
    version: u64,
}

/// Device, inode, size, mtime and ctime (ns).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Whether the file's last change (mtime or ctime, the later) is at least
/// `racy` before `now`. A change time in the future (a skewed clock) is
/// never trusted.
fn settled(m: &std::fs::Metadata, now: SystemTime, racy: Duration) -> bool {
    let changed = |secs: i64, nsec: i64| {
        let nanos = i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - nanos
    };
    let age = changed(m.mtime(), m.mtime_nsec()).min(changed(m.ctime(), m.ctime_nsec()));
    age >= racy.as_nanos() as i128
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(b);
    h.finish()
}

impl MappingFile {
    fn new(path: PathBuf, format: Format) -> Self {
        MappingFile {
            path,
            format,
            seen: None,
            racy: RACY,
            parses: 0,
            reads: 0,
        }
    }

    /// Parses the file's `bytes`; `meta` is its stat, taken (at `now`)
    /// before the read, so that a write after it changes the next stat.
    fn parse_file(
        &mut self,
        meta: &std::fs::Metadata,
        now: SystemTime,
        bytes: Vec<u8>,
    ) -> Result<OwnerMap, FetchError> {
        let hash = hash_bytes(&bytes);
        let text = String::from_utf8(bytes).map_err(|e| FetchError::new("parse", e))?;
        self.parses += 1;
        let (map, skipped) = parse(&text, self.format).map_err(|e| FetchError::new("parse", e))?;
        drop(text);
        if skipped > 0 {
            tracing::warn!(path = %self.path.display(), skipped, "owner mapping rows without exactly one of id, name, pid were skipped");
        }
        self.seen = Some(Seen {
            stamp: stamp(meta),
            trusted: settled(meta, now, self.racy),
            verified: Instant::now(),
            bytes: hash,
            version: map.version(),
        });
        Ok(map)
    }

    fn read(&mut self) -> Result<Vec<u8>, FetchError> {
        self.reads += 1;
        std::fs::read(&self.path).map_err(|e| FetchError::new("read", e))
    }

    fn metadata(&self) -> Result<std::fs::Metadata, FetchError> {
        std::fs::metadata(&self.path).map_err(|e| FetchError::new("read", e))
    }
}

impl OwnerSource for MappingFile {
    fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
        let now = SystemTime::now();
        let meta = self.metadata()?;
        let bytes = self.read()?;
        self.parse_file(&meta, now, bytes)
    }

    fn refresh(&mut self, published: Option<u64>) -> Result<Fetched, FetchError> {
        let now = SystemTime::now();
        let meta = self.metadata()?;
        let Some(seen) = self.seen.as_mut().filter(|s| published == Some(s.version)) else {
            // Never parsed, or the readers hold another map (the runner
            // dropped a late answer): a full fetch.
            let bytes = self.read()?;
            return self
                .parse_file(&meta, now, bytes)
                .map(|m| Fetched::Map(Box::new(m)));
        };
        if seen.trusted && seen.stamp == stamp(&meta) && seen.verified.elapsed() < REVERIFY {
            return Ok(Fetched::Unchanged);
        }
        let bytes = self.read()?;
        let hash = hash_bytes(&bytes);
        if let Some(seen) = self.seen.as_mut().filter(|s| s.bytes == hash) {
            // Touched, or rewritten with the same bytes: nothing to parse.
            seen.stamp = stamp(&meta);
            seen.trusted = settled(&meta, now, self.racy);
            seen.verified = Instant::now();
            return Ok(Fetched::Unchanged);
        }
        self.parse_file(&meta, now, bytes)
            .map(|m| Fetched::Map(Box::new(m)))
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

/// The rows of a whole file; how many were skipped (public for
/// `benches/owners_map.rs`). An error when the file
/// does not parse as a whole (nothing is taken from a half-written file).
pub fn parse(text: &str, format: Format) -> Result<(OwnerMap, usize), String> {
    let mut map = OwnerMap::default();
    let mut skipped = 0;
    let mut take = |r: Row| {
        if !add_row(&mut map, r) {
            skipped += 1;
        }
    };
    match format {
        Format::Toml => toml::from_str::<Doc>(text)
            .map_err(|e| e.to_string())?
            .vm
            .into_iter()
            .for_each(take),
        Format::Json => {
            let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let rows = if v.is_array() {
                v
            } else {
                v.get_mut("vm")
                    .map_or(serde_json::Value::Null, serde_json::Value::take)
            };
            let rows: Vec<Row> = serde_json::from_value(rows).map_err(|e| e.to_string())?;
            rows.into_iter().for_each(take);
        }
        // Row by row into the map: a 100 000-line file is never held as
        // rows of owned strings on top of the map.
        Format::Csv => csv_rows(text, &mut take)?,
    }
    map.skipped = skipped;
    Ok((map, skipped))
}

/// Puts one row in `map`; `false` if it is malformed (no VM key or two, no
/// owner field).
fn add_row(map: &mut OwnerMap, r: Row) -> bool {
    let key = match (r.id, r.name, r.pid) {
        (Some(id), None, None) if !id.trim().is_empty() => VmKey::Id(id.trim().to_owned()),
        (None, Some(name), None) if !name.is_empty() => VmKey::Name(name),
        (None, None, Some(pid)) => VmKey::Pid(pid),
        _ => return false,
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let owner = Owner {
        user_id: nonempty(r.user_id),
        user_name: nonempty(r.user_name),
        project_id: nonempty(r.project_id),
        project_name: nonempty(r.project_name),
    };
    if owner == Owner::default() {
        return false;
    }
    map.insert(key, owner);
    true
}

/// CSV with a header line naming the columns, each row handed to `each`.
/// The file parses as a whole or not at all: an unknown column, an
/// unterminated quote or a row with the wrong number of fields is an error
/// (the caller drops what `each` built).
fn csv_rows(text: &str, each: &mut impl FnMut(Row)) -> Result<(), String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(());
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
        each(row);
    }
    Ok(())
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::Arc;

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
        let mut src = MappingFile::new(path.clone(), Format::Toml);
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

    fn version(f: Fetched) -> u64 {
        match f {
            Fetched::Map(m) => m.version(),
            Fetched::Unchanged => panic!("expected a map, got unchanged"),
        }
    }

    const ALICE: &str = "name,user_name\nweb-1,alice\n";
    const BOBBY: &str = "name,user_name\nweb-1,bobby\n";

    #[test]
    fn an_unchanged_file_is_neither_read_nor_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.csv");
        std::fs::write(&path, ALICE).unwrap();
        let mut src = MappingFile::new(path.clone(), Format::Csv);
        let v = version(src.refresh(None).unwrap());
        assert_eq!((src.reads, src.parses), (1, 1));
        // Just written, so the stat is not trusted yet: read and hashed,
        // not parsed.
        assert!(matches!(src.refresh(Some(v)).unwrap(), Fetched::Unchanged));
        assert_eq!((src.reads, src.parses), (2, 1));
        // A settled file (here: a zero racy window): the stat alone.
        src.racy = Duration::ZERO;
        src.seen.as_mut().unwrap().trusted = true;
        for _ in 0..3 {
            assert!(matches!(src.refresh(Some(v)).unwrap(), Fetched::Unchanged));
        }
        assert_eq!((src.reads, src.parses), (2, 1));
        // Readers holding another map (the runner dropped a late answer)
        // get the full map again.
        assert_eq!(version(src.refresh(Some(v ^ 1)).unwrap()), v);
        assert_eq!(version(src.refresh(None).unwrap()), v);
        // Touched (new mtime and ctime), same bytes: read, not parsed.
        let parses = src.parses;
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert!(matches!(src.refresh(Some(v)).unwrap(), Fetched::Unchanged));
        assert_eq!(src.parses, parses);
    }

    /// Rewrites `path` in place with `text` and puts its mtime back to what
    /// it was, to the nanosecond: only the bytes (and the ctime) differ.
    fn rewrite_keeping_mtime(path: &std::path::Path, text: &str) {
        let before = std::fs::metadata(path).unwrap();
        std::fs::write(path, text).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        let after = std::fs::metadata(path).unwrap();
        assert_eq!(
            (after.ino(), after.len(), after.modified().unwrap()),
            (before.ino(), before.len(), before.modified().unwrap())
        );
    }

    #[test]
    fn a_same_size_rewrite_with_the_same_mtime_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.csv");
        std::fs::write(&path, ALICE).unwrap();
        let mut src = MappingFile::new(path.clone(), Format::Csv);
        let v = version(src.refresh(None).unwrap());

        // Within the racy window: the bytes are compared.
        rewrite_keeping_mtime(&path, BOBBY);
        let Fetched::Map(map) = src.refresh(Some(v)).unwrap() else {
            panic!("a rewrite of the same size and mtime was missed");
        };
        assert_eq!(user(&map, facts("x", "web-1", 1)).as_deref(), Some("bobby"));
        let v = map.version();

        // With the stat trusted at once (no racy window), the ctime, which
        // no writer can set back, still tells.
        src.racy = Duration::ZERO;
        assert!(matches!(src.refresh(Some(v)).unwrap(), Fetched::Unchanged));
        std::thread::sleep(Duration::from_millis(20));
        rewrite_keeping_mtime(&path, ALICE);
        let Fetched::Map(map) = src.refresh(Some(v)).unwrap() else {
            panic!("a rewrite that kept the mtime was missed");
        };
        assert_eq!(user(&map, facts("x", "web-1", 1)).as_deref(), Some("alice"));
    }

    #[test]
    fn through_the_runner_an_unchanged_file_keeps_the_readers_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.csv");
        std::fs::write(&path, ALICE).unwrap();
        let opts = RunOptions {
            every: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        };
        let r = crate::owners::runner::spawn(
            "file",
            Box::new(MappingFile::new(path.clone(), Format::Csv)),
            opts,
        )
        .unwrap();
        let published = &r.published;
        let eventually = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(std::time::Instant::now() < deadline, "timed out: {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        eventually("the first map", &|| published.health().up);
        let first = published.try_map().unwrap();
        for _ in 0..3 {
            let before = published.health().last_success;
            eventually("another refresh", &|| {
                published.health().last_success != before
            });
        }
        assert!(Arc::ptr_eq(&first, &published.try_map().unwrap()));
        assert_eq!(published.health().rows, 1);
        // A real change (same size, same mtime) is published.
        rewrite_keeping_mtime(&path, BOBBY);
        eventually("the change", &|| {
            let m = published.try_map().unwrap();
            user(&m, facts("x", "web-1", 1)).as_deref() == Some("bobby")
        });
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
