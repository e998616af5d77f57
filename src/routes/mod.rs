//! `routes/*.toml`: which messages go through which mapping.
//!
//! ```toml
//! [[route]]
//! name = "lab-results"
//! from = ["lab"]                  # listener names; omitted or empty: any listener
//! message = ["ORU^R01"]           # MSH-9 patterns: TYPE^TRIGGER[^STRUCTURE], `*` matches any part
//! sending_application = ["LIS*"]  # optional: MSH-3.1 patterns (`*` any run, `?` one character)
//! sending_facility = ["BVDK_*"]   # optional: MSH-4.1 patterns
//! processing_id = ["P"]           # optional: MSH-11.1 patterns (P production, T training, D debug)
//! mapping = "oru_r01"             # mappings/oru_r01.toml
//! ```
//! An omitted or empty list matches anything; text patterns ignore ASCII case.
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
    #[serde(default)]
    sending_application: Vec<Spanned<String>>,
    #[serde(default)]
    sending_facility: Vec<Spanned<String>>,
    #[serde(default)]
    processing_id: Vec<Spanned<String>>,
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
    /// MSH-3.1 patterns; empty: any.
    pub sending_application: Vec<String>,
    /// MSH-4.1 patterns; empty: any.
    pub sending_facility: Vec<String>,
    /// MSH-11.1 patterns; empty: any.
    pub processing_id: Vec<String>,
    pub mapping: String,
    /// DICOM: calling AE titles this route takes; empty: any.
    pub calling_ae: Vec<String>,
    /// Where the route was defined, for messages to operators.
    pub file: PathBuf,
}

/// What is wrong with part `i` (0: type, 1: trigger, 2: structure) of message pattern
/// `t`, which is `p`, the pattern's type being `ty`: a part is `*` or has the shape MSH-9
/// gives it (`ORU`, `R01`, `ORU_R01`), so that a pattern that could never match is
/// refused. For type `DICOM` (and `*`, which DICOM instances match too) the second part
/// may be a modality (`CT`, `IVUS`); a DICOM pattern has no third part.
fn pattern_part_problem(t: &str, ty: &str, i: usize, p: &str) -> Option<String> {
    if p == "*" {
        return None;
    }
    if p.contains('*') {
        return Some(format!(
            "message pattern \"{t}\": \"{p}\" mixes * with text; * stands for a whole part (\"ADT^*\")"
        ));
    }
    let structure_like = p.len() == 7 && p.as_bytes()[3] == b'_';
    if i == 0 && structure_like {
        let (ty, trigger) = (&p[..3], &p[4..]);
        return Some(format!(
            "message pattern \"{t}\": \"{p}\" is a message structure; write \"{ty}^{trigger}\" (TYPE^TRIGGER), or \"{ty}^{trigger}^{p}\""
        ));
    }
    let any = ty == "*";
    let dicom = ty.eq_ignore_ascii_case("DICOM");
    let three = p.len() == 3 && !p.contains('_');
    let ok = match i {
        0 => three || dicom,
        1 if dicom || any => p.len() <= 16 && !p.contains('_'),
        1 => three,
        _ => !dicom && (three || structure_like),
    };
    if ok {
        return None;
    }
    let what = match i {
        1 if dicom || any => "a modality is at most 16 letters or digits (\"CT\", \"MR\")",
        2 if dicom => "a DICOM pattern is DICOM^MODALITY",
        0 => "the message type is 3 characters (\"ORU\", \"ADT\")",
        1 => "the trigger event is 3 characters (\"R01\", \"A08\")",
        _ => "the message structure is like \"ORU_R01\"",
    };
    Some(format!(
        "message pattern \"{t}\": \"{p}\" does not fit: {what}"
    ))
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
            if let Some(problem) = pattern_part_problem(t, pieces[0], i, p) {
                return Err(problem);
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
            && self.matches_message(header)
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

    /// Everything but the listener: MSH-9, MSH-3, MSH-4 and MSH-11.
    pub fn matches_message(&self, header: &Header) -> bool {
        let first = |raw: &str| -> String {
            let d = header.delimiters();
            let rep = raw.split(d.repetition).next().unwrap_or("");
            rep.split(d.component).next().unwrap_or("").to_string()
        };
        let any = |patterns: &[String], value: &str| {
            patterns.is_empty() || patterns.iter().any(|p| glob(p, value))
        };
        self.message.iter().any(|p| p.matches(header))
            && any(
                &self.sending_application,
                &first(&header.sending_application),
            )
            && any(&self.sending_facility, &first(&header.sending_facility))
            && any(&self.processing_id, &first(&header.processing_id))
    }
}

/// `*` matches any run of characters, `?` one; the rest literally, ignoring ASCII case.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Every route, in match order.
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
}

impl RouteSet {
    /// Loads `dir/*.toml`. `mappings` and `listeners` are the names routes may refer to.
    /// `listeners`: the listener names `from` may give; `None` when they are not known
    /// (the config could not be read), and then `from` is not checked.
    pub fn load(
        dir: &Path,
        mappings: &[String],
        listeners: Option<&[String]>,
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
    listeners: Option<&[String]>,
    routes: &mut Vec<Route>,
    problems: &mut Vec<Diagnostic>,
) {
    let parsed: RouteFile = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            // With only misspelt keys, the routes are checked as meant (same positions).
            let (found, repaired) = crate::config::every_toml_problem(file, text, e);
            problems.extend(found);
            match repaired {
                Some((p, _)) => p,
                None => return,
            }
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
        if !mappings.contains(&mapping) {
            let hint = did_you_mean(&mapping, mappings.iter().map(String::as_str))
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_else(|| match crate::mapping::not_a_mapping(&mapping) {
                    Some(what) => what.to_string(),
                    None => format!(" (no mappings/{mapping}.toml)"),
                });
            problems.push(at(
                def.mapping.span(),
                format!("unknown mapping \"{mapping}\"{hint}"),
            ));
        }
        if let Some(listeners) = listeners {
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
        let mut texts = |list: Vec<Spanned<String>>, what: &str| -> Vec<String> {
            let mut out = Vec::new();
            for p in list {
                let t = p.get_ref().trim();
                if t.is_empty() {
                    problems.push(at(
                        p.span(),
                        format!("empty {what} pattern; write e.g. \"LIS\" or \"LIS*\""),
                    ));
                } else {
                    out.push(t.to_string());
                }
            }
            out
        };
        let sending_application = texts(def.sending_application, "sending_application");
        let sending_facility = texts(def.sending_facility, "sending_facility");
        let processing_id = texts(def.processing_id, "processing_id");
        routes.push(Route {
            name,
            description: def.description,
            from: def.from.into_iter().map(Spanned::into_inner).collect(),
            message: patterns,
            sending_application,
            sending_facility,
            processing_id,
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
