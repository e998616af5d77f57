//! `routes/*.toml`: which messages go through which mapping.
//!
//! ```toml
//! [[route]]
//! name = "lab-results"
//! from = ["lab"]                  # listener names; omitted or empty: any listener
//! message = ["ORU^R01"]           # MSH-9 patterns: TYPE^TRIGGER[^STRUCTURE], `*` matches any part
//! mapping = "oru_r01"             # mappings/oru_r01.toml
//! ```
//!
//! A DICOM instance has the message type `DICOM^<Modality>` (`DICOM^CT`, `DICOM^*`), and
//! a route may also name the calling AE titles it takes: `calling_ae = ["CT01"]`
//! (omitted or empty: any; a route with `calling_ae` takes DICOM instances only).
//!
//! Files are read in name order and routes in file order; the first route that matches
//! wins. A message no route matches is kept with status `unrouted`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{did_you_mean, Diagnostic};
use crate::hl7::Header;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    route: Vec<RouteDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDef {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    from: Vec<Spanned<String>>,
    message: Vec<Spanned<String>>,
    mapping: Spanned<String>,
    #[serde(default)]
    calling_ae: Vec<String>,
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub description: Option<String>,
    pub from: Vec<String>,
    pub message: Vec<MessagePattern>,
    pub mapping: String,
    /// DICOM: calling AE titles this route takes; empty: any.
    pub calling_ae: Vec<String>,
    /// Where the route was defined, for messages to operators.
    pub file: PathBuf,
}

/// `TYPE^TRIGGER^STRUCTURE` with `*` for any; missing parts match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePattern {
    parts: [Option<String>; 3],
    text: String,
}

impl MessagePattern {
    pub fn parse(text: &str) -> Result<MessagePattern, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty message pattern; write e.g. \"ORU^R01\" or \"ADT^*\"".into());
        }
        let pieces: Vec<&str> = t.split('^').collect();
        if pieces.len() > 3 {
            return Err(format!(
                "message pattern \"{t}\" has more than 3 parts (TYPE^TRIGGER^STRUCTURE)"
            ));
        }
        let mut parts: [Option<String>; 3] = Default::default();
        for (i, p) in pieces.iter().enumerate() {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
            {
                return Err(format!(
                    "message pattern \"{t}\": part {} \"{p}\" must be letters, digits, _ or *",
                    i + 1
                ));
            }
            parts[i] = (*p != "*").then(|| p.to_ascii_uppercase());
        }
        Ok(MessagePattern {
            parts,
            text: t.to_string(),
        })
    }

    pub fn matches(&self, header: &Header) -> bool {
        self.matches_parts([
            header.message_code.as_str(),
            header.trigger_event.as_str(),
            header.message_structure.as_str(),
        ])
    }

    /// Matches `[type, trigger, structure]`.
    pub fn matches_parts(&self, actual: [&str; 3]) -> bool {
        self.parts
            .iter()
            .zip(actual)
            .all(|(want, got)| want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(got)))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Route {
    pub fn matches(&self, listener: &str, header: &Header) -> bool {
        (self.from.is_empty() || self.from.iter().any(|f| f == listener))
            && self.calling_ae.is_empty()
            && self.message.iter().any(|p| p.matches(header))
    }

    /// Whether this route takes a DICOM instance of `modality` from `calling_ae`.
    pub fn matches_dicom(&self, listener: &str, calling_ae: &str, modality: &str) -> bool {
        (self.from.is_empty() || self.from.iter().any(|f| f == listener))
            && (self.calling_ae.is_empty()
                || self
                    .calling_ae
                    .iter()
                    .any(|a| a.trim() == calling_ae.trim()))
            && self
                .message
                .iter()
                .any(|p| p.matches_parts(["DICOM", modality, ""]))
    }
}

/// Every route, in match order.
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
}

impl RouteSet {
    /// Loads `dir/*.toml`. `mappings` and `listeners` are the names routes may refer to.
    pub fn load(
        dir: &Path,
        mappings: &[String],
        listeners: &[String],
    ) -> Result<RouteSet, Vec<Diagnostic>> {
        let mut files = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(vec![Diagnostic::whole_file(
                    dir,
                    format!("cannot read routes directory: {e}"),
                )])
            }
        };
        files.sort();
        let mut routes = Vec::new();
        let mut problems = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => load_file(
                    &file,
                    &text,
                    mappings,
                    listeners,
                    &mut routes,
                    &mut problems,
                ),
                Err(e) => problems.push(Diagnostic::whole_file(&file, format!("cannot read: {e}"))),
            }
        }
        if problems.is_empty() {
            Ok(RouteSet { routes })
        } else {
            Err(problems)
        }
    }

    /// The first route that takes this message.
    pub fn find(&self, listener: &str, header: &Header) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(listener, header))
    }

    /// The first route that takes a DICOM instance.
    pub fn find_dicom(&self, listener: &str, calling_ae: &str, modality: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matches_dicom(listener, calling_ae, modality))
    }

    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn load_file(
    file: &Path,
    text: &str,
    mappings: &[String],
    listeners: &[String],
    routes: &mut Vec<Route>,
    problems: &mut Vec<Diagnostic>,
) {
    let parsed: RouteFile = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            problems.push(crate::config::toml_diagnostic(file, text, &e));
            return;
        }
    };
    let at = |span: std::ops::Range<usize>, msg: String| {
        Diagnostic::at_offset(file, text, span.start, msg)
    };
    for def in parsed.route {
        let name = def.name.get_ref().trim().to_string();
        if name.is_empty() {
            problems.push(at(def.name.span(), "route name must not be empty".into()));
        } else if let Some(other) = routes.iter().find(|r: &&Route| r.name == name) {
            problems.push(at(
                def.name.span(),
                format!(
                    "duplicate route name \"{name}\" (first defined in {})",
                    other.file.display()
                ),
            ));
        }
        let mapping = def.mapping.get_ref().trim().to_string();
        if !mappings.iter().any(|m| *m == mapping) {
            let hint = did_you_mean(&mapping, mappings.iter().map(String::as_str))
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_else(|| format!(" (no mappings/{mapping}.toml)"));
            problems.push(at(
                def.mapping.span(),
                format!("unknown mapping \"{mapping}\"{hint}"),
            ));
        }
        for f in &def.from {
            if !listeners.iter().any(|l| l == f.get_ref()) {
                let hint = did_you_mean(f.get_ref(), listeners.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_else(|| {
                        format!("; halong.toml defines: {}", quoted_list(listeners))
                    });
                problems.push(at(
                    f.span(),
                    format!("unknown listener \"{}\"{hint}", f.get_ref()),
                ));
            }
        }
        if def.message.is_empty() {
            problems.push(at(
                def.name.span(),
                format!("route \"{name}\" has an empty message list"),
            ));
        }
        let mut patterns = Vec::new();
        for m in &def.message {
            match MessagePattern::parse(m.get_ref()) {
                Ok(p) => patterns.push(p),
                Err(msg) => problems.push(at(m.span(), msg)),
            }
        }
        routes.push(Route {
            name,
            description: def.description,
            from: def.from.into_iter().map(Spanned::into_inner).collect(),
            message: patterns,
            mapping,
            calling_ae: def.calling_ae,
            file: file.to_path_buf(),
        });
    }
}

fn quoted_list(names: &[String]) -> String {
    if names.is_empty() {
        return "no listeners".into();
    }
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
