//! Field formatting for the text log format that escapes control characters.
//!
//! tracing-subscriber's text format writes `%` field values and messages
//! raw, so a VM name such as `"x\nINFO forged"` (names come from command
//! lines, XML and, soon, databases) would write a second, forged log line.
//! [`EscapingFields`] formats fields as the default does, through a writer
//! that turns every control character (and the Unicode line and paragraph
//! separators) into a visible escape: `\n`, `\r`, `\t`, `\u{1b}`. One event
//! is therefore always one line. Backslashes are left as they are.
//!
//! The JSON format needs none of this: serde_json escapes control
//! characters in strings.

use std::fmt::{self, Write};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// [`DefaultFields`] with control characters escaped.
#[derive(Debug, Default)]
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaper = Escaper(&mut writer);
        DefaultFields::new().format_fields(Writer::new(&mut escaper), fields)
    }
}

/// A `fmt::Write` that escapes what it passes on.
struct Escaper<'a, W>(&'a mut W);

impl<W: Write> Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if needs_escape(c) {
                self.0.write_str(&s[start..i])?;
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                }
                start = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[start..])
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` as the text log writes it.
#[cfg(test)]
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = Escaper(&mut out).write_str(s);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\r\t\u{1b}[31m\u{7}"), "\\r\\t\\u{1b}[31m\\u{7}");
        assert_eq!(escape("x\u{2028}y\u{85}"), "x\\u{2028}y\\u{85}");
        assert_eq!(escape("plain ünïcode \\n"), "plain ünïcode \\n");
    }
}
