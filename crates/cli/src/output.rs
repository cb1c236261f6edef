//! Printing data the way every command does: `-o table` (default), `-o json`, `-o yaml`.
//!
//! Commands build a serializable value plus a table view of it; this module picks one.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// The `-o` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// A table with the house look: no borders, headers in capitals, like kubectl.
pub fn table<I, S>(headers: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers);
    t
}

/// Prints `value` as JSON or YAML, or `table` when the format is `Table`.
pub fn emit<T: Serialize>(format: Format, value: &T, table: impl FnOnce() -> String) -> Result<()> {
    let text = match format {
        Format::Table => table(),
        Format::Json => serde_json::to_string_pretty(value)?,
        Format::Yaml => serde_saphyr::to_string(value)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Renders a table without the trailing spaces comfy-table leaves in borderless mode.
pub fn render(t: &Table) -> String {
    t.trim_fmt()
}
