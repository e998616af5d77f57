//! `HALONG_SECTION__KEY=value` overrides of scalar config values.

use std::path::Path;

use super::Config;
use crate::diag::Diagnostic;

/// One override taken from the environment.
#[derive(Debug, Clone)]
pub(super) struct Override {
    pub var: String,
    /// Lowercased path below the root: `["http", "bind"]`, `["listener", "lab", "bind"]`.
    pub path: Vec<String>,
    pub value: String,
}

pub(super) fn collect(env: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut out: Vec<Override> = env
        .into_iter()
        .filter_map(|(var, value)| {
            let rest = var.strip_prefix("HALONG_")?;
            if !rest.contains("__") {
                return None; // e.g. HALONG_LOG: not a config override
            }
            let path = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            Some(Override { var, path, value })
        })
        .collect();
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

/// Re-reads the file as a plain table, applies the overrides, and deserializes again.
pub(super) fn apply(
    path: &Path,
    text: &str,
    overrides: &[Override],
) -> Result<Config, Vec<Diagnostic>> {
    let mut root: toml::Table =
        toml::from_str(text).map_err(|e| vec![super::toml_diagnostic(path, text, &e)])?;
    let mut problems = Vec::new();
    for o in overrides {
        if let Err(msg) = set(&mut root, o) {
            problems.push(Diagnostic::whole_file(
                path,
                format!("environment {}: {msg}", o.var),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let names: Vec<&str> = overrides.iter().map(|o| o.var.as_str()).collect();
    toml::Value::Table(root).try_into::<Config>().map_err(|e| {
        vec![Diagnostic::whole_file(
            path,
            format!(
                "after environment overrides ({}): {}",
                names.join(", "),
                e.message().trim()
            ),
        )]
    })
}

fn set(root: &mut toml::Table, o: &Override) -> Result<(), String> {
    let (table, key) = match o.path.as_slice() {
        [section, key] if section != "listener" => {
            let t = root
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("[{section}] is not a table"))?;
            (t, key)
        }
        [section, name, key] if section == "listener" => {
            let listeners = root
                .get_mut("listener")
                .and_then(|v| v.as_array_mut())
                .ok_or_else(|| "the config has no [[listener]]".to_string())?;
            let wanted = name.replace('-', "_");
            let t = listeners
                .iter_mut()
                .filter_map(|v| v.as_table_mut())
                .find(|t| {
                    t.get("name")
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| n.to_ascii_lowercase().replace('-', "_") == wanted)
                })
                .ok_or_else(|| format!("no listener named \"{name}\""))?;
            (t, key)
        }
        _ => {
            return Err("expected HALONG_SECTION__KEY or HALONG_LISTENER__<NAME>__KEY".to_string());
        }
    };
    let value = match table.get(key.as_str()) {
        Some(toml::Value::String(_)) | None => typed_guess(key, &o.value, table.get(key.as_str())),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            o.value
                .trim()
                .parse()
                .map_err(|_| format!("\"{}\" is not an integer", o.value))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(parse_bool(&o.value)?),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            o.value
                .trim()
                .parse()
                .map_err(|_| format!("\"{}\" is not a number", o.value))?,
        ),
        Some(_) => {
            return Err(format!(
                "`{key}` is not a scalar; only scalars can be overridden"
            ))
        }
    };
    table.insert(key.clone(), value);
    Ok(())
}

/// Keys whose value is text even when it looks like a number: a facility code such as
/// `01001` keeps its leading zero.
const TEXT_KEYS: &[&str] = &[
    "facility", "ae_title", "name", "prefix", "token", "tls_cert", "tls_key", "dir",
];

/// A key absent from the file gets an integer or boolean when the text is one, unless
/// the key always takes text.
fn typed_guess(key: &str, text: &str, existing: Option<&toml::Value>) -> toml::Value {
    if existing.is_none() && !TEXT_KEYS.contains(&key) {
        if let Ok(i) = text.trim().parse::<i64>() {
            return toml::Value::Integer(i);
        }
        if let Ok(b) = parse_bool(text) {
            return toml::Value::Boolean(b);
        }
    }
    toml::Value::String(text.to_string())
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("\"{text}\" is not a boolean (true/false)")),
    }
}
