//! Log output on stderr, as text or JSON lines.

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;
use crate::progress;

/// Installs the global subscriber. Fails if `filter` is not a valid level or directive list.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid --log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr);
    match format {
        LogFormat::Text => builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
    Ok(())
}

/// Whether the command line or the environment asks for JSON logs, for errors found before the
/// command line is parsed.
pub fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--log-format") {
        Some("") => args.get(i + 1).cloned(),
        Some(value) => value.strip_prefix('=').map(str::to_owned),
        None => None,
    });
    flag.or_else(|| std::env::var("IMAGE_PRELOADER_LOG_FORMAT").ok()).is_some_and(|f| f == "json")
}

/// A usage or configuration error as a JSON log line (the fields of the other JSON lines):
/// `summary` says what kind of error, `message` is its text (its first line when it has several,
/// without a leading `error: `), and the whole text goes in `detail` when it has more.
pub fn json_error(summary: &str, message: &str) -> String {
    let text = message.trim_end();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        "level": "ERROR",
        "message": first,
        "error": summary,
    });
    if text.lines().nth(1).is_some() {
        line["detail"] = serde_json::Value::from(text);
    }
    line.to_string()
}

/// Stderr, one log line at a time, written with the progress bars cleared so that they do not
/// tear it.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One log event, written out when the formatter drops it.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            progress::suspend(|| {
                let _ = std::io::stderr().lock().write_all(&self.0);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_is_one_line_with_the_message_first() {
        let line = json_error(
            "invalid value",
            "error: invalid value 'x' for '--interval'\n\nFor more information, try '--help'.\n",
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(value["level"], "ERROR");
        assert_eq!(value["message"], "invalid value 'x' for '--interval'");
        assert_eq!(value["error"], "invalid value");
        assert!(value["detail"].as_str().unwrap().contains("--help"));
        let single: serde_json::Value =
            serde_json::from_str(&json_error("configuration error", "bad")).unwrap();
        assert_eq!(single["message"], "bad");
        assert!(single.get("detail").is_none());
    }
}
