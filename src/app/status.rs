//! `status`: the archive directory as a table or JSON, from its files alone.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::app::AppError;
use crate::cli::OutputFormat;
use crate::human;
use crate::image::list::ImageSpec;
use crate::store::inventory::{self, Entry};

pub(super) async fn status(
    dir: PathBuf,
    images: Option<Vec<ImageSpec>>,
    max_age: Option<Duration>,
    output: OutputFormat,
) -> Result<(), AppError> {
    let root = dir.clone();
    let entries = crate::store::blocking(move || {
        inventory::inventory(&root, images.as_deref(), max_age, SystemTime::now())
    })
    .await;
    let text = match output {
        OutputFormat::Json => serde_json::to_string_pretty(&entries).unwrap_or_default() + "\n",
        OutputFormat::Table => table(&entries),
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Aligned columns, one row per entry, then a summary line.
fn table(entries: &[Entry]) -> String {
    let mut rows =
        vec![["ARCHIVE", "REFERENCE", "SIZE", "AGE", "DIGEST", "FRESHNESS", "PROBLEMS"].map(String::from)];
    for e in entries {
        let mut problems = e.problems.join("; ");
        if e.listed == Some(false) {
            problems =
                if problems.is_empty() { "not listed".into() } else { format!("not listed; {problems}") };
        }
        rows.push([
            e.archive.display().to_string(),
            e.reference.clone().unwrap_or_else(|| "-".into()),
            e.size.map_or("-".into(), human::bytes),
            e.age_seconds.map_or("-".into(), age),
            e.digest.as_deref().map_or("-".into(), short_digest),
            e.freshness.to_owned(),
            if problems.is_empty() { "-".into() } else { problems },
        ]);
    }
    let widths: Vec<usize> =
        (0..7).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let problems = entries.iter().filter(|e| !e.problems.is_empty()).count();
    let bytes: u64 = entries.iter().filter_map(|e| e.size).sum();
    out.push_str(&format!(
        "{} archives ({}), {} with problems\n",
        entries.iter().filter(|e| e.size.is_some()).count(),
        human::bytes(bytes),
        problems
    ));
    out
}
