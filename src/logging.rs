//! The daemon's log: tracing's text format or JSON lines, one event per line whatever the logged
//! values hold.
//!
//! Values come from input (vote reasons, person ids, labels, error messages), so in the text
//! format every field value and message has its control characters escaped (`\n`, `\r`, `\t`,
//! others as `\u{1b}`): a newline in a reason cannot start a forged line. Colour only on a
//! terminal, and never with `NO_COLOR` set. The JSON format writes one object per line
//! (`timestamp`, `level`, `target`, `message` and the event's fields at the top level), which
//! JSON's own escaping keeps on one line.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use serde::Deserialize;
use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;

/// `s` with every control character (C0, DEL, C1) and the Unicode line and paragraph separators
/// escaped, so it prints as one line.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(breaks_lines) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if breaks_lines(c) => {
                let _ = write!(out, "{}", c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn breaks_lines(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// One field as the default text format writes it (`name=value`, the message bare), escaped.
fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let name = field.name();
    // The `log` crate's metadata, already shown as the event's target.
    if name.starts_with("log.") {
        return Ok(());
    }
    let text = format!("{value:?}");
    let text = one_line(&text);
    match name {
        "message" => w.write_str(&text),
        name => write!(w, "{}={text}", name.strip_prefix("r#").unwrap_or(name)),
    }
}

/// Colour when stderr is a terminal and `NO_COLOR` is unset or empty.
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// How log lines are written: `--log-format` or the config's `log_format`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// tracing's text format, escaped to one line per event; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers; never coloured.
    Json,
}

/// The subscriber of `format` writing to `writer` (`ansi` applies to the text format only).
pub fn subscriber_of<W>(
    format: Format,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        Format::Text => Box::new(subscriber(filter, writer, ansi)),
        Format::Json => Box::new(json_subscriber(filter, writer)),
    }
}

/// The JSON-lines subscriber writing to `writer`: one flat object per event.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .finish()
}

/// The text-format subscriber writing to `writer`.
pub fn subscriber<W>(
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" "))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_event_is_one_line() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(EnvFilter::new("info"), move || buf.clone(), false);
        let forged =
            "ok\n2026-01-01T00:00:00Z  INFO rollbackd: forged\r\t\u{1b}[31m\u{7f}\u{85}\u{2028}";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(reason = forged, shown = %forged, debug = ?forged, "said: {forged}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("said: ok\\n2026-01-01T00:00:00Z  INFO rollbackd: forged\\r\\t\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}"),
            "{text}"
        );
        assert!(text.contains("shown=ok\\n2026"), "{text}");
        assert!(text.contains("reason=\"ok\\n2026"), "{text}");
    }

    #[test]
    fn json_lines_parse_whatever_the_values_hold() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber_of(
            Format::Json,
            EnvFilter::new("info"),
            move || buf.clone(),
            true,
        );
        let forged = "ok\n{\"level\":\"ERROR\"}\r\t\u{1b}[31m\u{2028}";
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(reason = forged, n = 3, "said: {forged}");
            tracing::info!("plain");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(first["level"], "WARN", "{first}");
        assert_eq!(first["message"], format!("said: {forged}"), "{first}");
        assert_eq!(first["reason"], forged, "{first}");
        assert_eq!(first["n"], 3, "{first}");
        assert!(first["timestamp"].is_string(), "{first}");
        assert!(first["target"].is_string(), "{first}");
    }

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(one_line("a b=c \"d\" é"), Cow::Borrowed(_)));
        assert_eq!(one_line("a\nb"), "a\\nb");
    }
}
