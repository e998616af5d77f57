//! Mapping files (`mappings/<name>.toml`): the TOML model, read with spans, validated
//! and compiled into rules. Every problem becomes a [`Diagnostic`] pointing at the
//! offending key, value, or the exact character inside an expression string.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::expr::{self, Expr};
use super::fhir_types::R4_RESOURCE_TYPES;
use super::functions::{self, FUNCTIONS};
use super::output::{parse_out_path, Step};
use super::tables::TableMap;
use crate::diag::{did_you_mean, Diagnostic};

/// One `[[resource]]`, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    pub resource_type: String,
    pub each: Option<String>,
    pub id: Expr,
    pub when: Option<Expr>,
    pub sets: Vec<SetRule>,
    /// `unique = true`: two different records of this rule under one id in one message
    /// are a mapping error, not the later replacing the earlier.
    pub unique: bool,
    /// How many distinct top-level elements its output paths name.
    pub roots: usize,
    /// The output's shape, when its paths never meet (see [`super::plan`]); else the
    /// resource is built in an [`super::output::Tree`].
    pub plan: Option<super::plan::Plan>,
}

/// One `[resource.set]` entry.
#[derive(Clone, Debug)]
pub struct SetRule {
    pub key: String,
    pub steps: Vec<Step>,
    pub expr: Expr,
    /// Which of its rule's top-level elements the path starts with (numbered in the
    /// order they first appear), so the resource's member is found without a search.
    pub root: usize,
}

const TOP_KEYS: &[&str] = &["description", "let", "resource"];
const RESOURCE_KEYS: &[&str] = &["type", "id", "each", "when", "set", "unique", "description"];

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&mut self, offset: usize, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::at_offset(self.file, self.text, offset, msg));
    }

    /// Length of the opening quote of the TOML string or key starting at `offset`.
    fn quote_len(&self, offset: usize) -> usize {
        let rest = self.text.get(offset..).unwrap_or("");
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            3
        } else if rest.starts_with('"') || rest.starts_with('\'') {
            1
        } else {
            0
        }
    }

    fn unknown_key(&mut self, key: &Spanned<std::borrow::Cow<'_, str>>, known: &[&str]) {
        let name = key.get_ref().as_ref();
        let hint = did_you_mean(name, known.iter().copied())
            .map_or(String::new(), |s| format!(" (did you mean {s:?}?)"));
        self.at(key.span().start, format!("unknown key {name:?}{hint}"));
    }
}

struct RawRule<'i> {
    span: Range<usize>,
    resource_type: Option<(String, Range<usize>)>,
    /// A `type` that is no R4 resource type (already reported), with the type it most
    /// likely meant.
    bad_type: Option<Option<&'static str>>,
    each: Option<(String, Range<usize>)>,
    id: Option<(String, Range<usize>)>,
    when: Option<(String, Range<usize>)>,
    sets: Vec<(Spanned<std::borrow::Cow<'i, str>>, String, Range<usize>)>,
    unique: bool,
}

/// The TOML document, or `None` with every syntax error reported.
fn parse_toml<'i>(cx: &mut Ctx<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc);
    }
    for e in errors {
        let msg = e.message().trim().to_string();
        let msg = match (msg.as_str(), e.span()) {
            ("duplicate key", Some(span)) => {
                crate::diag::explain_duplicate(text, span.start).unwrap_or(msg)
            }
            (_, Some(span)) if inner_double_quote(text, span.start) => {
                format!("{msg}; inside an expression, write text in single quotes: 'CP'")
            }
            _ => msg,
        };
        match e.span() {
            Some(span) => cx.at(span.start, format!("TOML syntax: {msg}")),
            None => cx.diags.push(Diagnostic::whole_file(
                cx.file,
                format!("TOML syntax: {msg}"),
            )),
        }
    }
    None
}

/// The `[let]` entries of a file: (name, expression text, key offset, value span), in
/// file order, and the names whose value is not an expression (reported).
type RawLets = (Vec<(String, String, usize, Range<usize>)>, Vec<String>);

fn read_lets(cx: &mut Ctx<'_>, value: &Spanned<DeValue<'_>>, out: &mut RawLets) {
    let DeValue::Table(t) = value.get_ref() else {
        cx.at(value.span().start, "let must be a table: [let]");
        return;
    };
    for (k, v) in t.iter() {
        let name = k.get_ref().as_ref();
        let word = expr::is_name(name);
        match v.get_ref() {
            DeValue::String(src) if word => {
                out.0
                    .push((name.to_string(), src.to_string(), k.span().start, v.span()))
            }
            _ if !word => cx.at(
                k.span().start,
                format!("a [let] name is letters, digits and _, starting with a letter: {name:?}"),
            ),
            _ => {
                out.1.push(name.to_string());
                cx.at(
                    v.span().start,
                    "expected an expression in a string, e.g. \"coalesce(PID-3[5=MR].1, PID-3.1)\"",
                )
            }
        }
    }
    out.0.sort_by_key(|l| l.2);
}

/// Compiles a file's `[let]` entries in file order on top of `base` (the shared ones):
/// each may use `base` and the entries above it.
fn compile_lets(
    cx: &mut Ctx<'_>,
    raw: RawLets,
    base: &expr::Lets,
    tables: &TableMap,
    refs: &Refs<'_>,
) -> expr::Lets {
    let (entries, bad) = raw;
    let mut lets = base.clone();
    for (name, _, at, _) in &entries {
        if base.names.contains_key(name) {
            cx.at(
                *at,
                format!("${name} is defined in {SHARED_FILE} already; give this one another name"),
            );
        }
    }
    let names = &mut lets.names;
    names.extend(entries.iter().map(|l| (l.0.clone(), expr::LetEntry::Below)));
    names.extend(bad.into_iter().map(|n| (n, expr::LetEntry::Failed)));
    for (name, src, _, span) in entries {
        let at = span.start + cx.quote_len(span.start);
        let entry = match compile_expr(cx, &src, at, tables, refs, &lets) {
            Some(e) => {
                let r = uses_ref(&e);
                expr::LetEntry::Ready(e, r)
            }
            None => expr::LetEntry::Failed,
        };
        lets.names.insert(name, entry);
    }
    lets
}

/// The file of `[let]` names every mapping of the directory may use.
pub const SHARED_FILE: &str = "shared.toml";

/// What a `shared.toml` that cannot be read or parsed (already reported) leaves: no
/// names, and uses of unknown ones quiet (see [`expr::Lets`]).
pub fn unreadable_shared() -> expr::Lets {
    expr::Lets {
        shared_unreadable: true,
        ..Default::default()
    }
}

/// Loads the directory's shared `[let]` names (`shared.toml`); its problems go to
/// `diags`. A `ref()` in it is not checked against what each mapping produces.
pub fn load_shared(
    file: &Path,
    text: &str,
    tables: &TableMap,
    diags: &mut Vec<Diagnostic>,
) -> expr::Lets {
    let mut cx = Ctx { file, text, diags };
    let Some(doc) = parse_toml(&mut cx, text) else {
        return unreadable_shared();
    };
    let mut raw: RawLets = (Vec::new(), Vec::new());
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "let" => read_lets(&mut cx, value, &mut raw),
            "description" => {}
            "resource" => cx.at(
                key.span().start,
                format!("{SHARED_FILE} holds only [let] names that every mapping may use; resources go in a mapping file"),
            ),
            _ => cx.unknown_key(key, &["description", "let"]),
        }
    }
    let produced = BTreeSet::new();
    let refs = Refs {
        allowed: true,
        produced: &produced,
        checked: false,
    };
    compile_lets(&mut cx, raw, &expr::Lets::default(), tables, &refs)
}

/// Loads one mapping file: its description and rules, or `None` when it has errors
/// (which are pushed to `diags`).
pub fn load(
    file: &Path,
    text: &str,
    tables: &TableMap,
    shared: &expr::Lets,
    diags: &mut Vec<Diagnostic>,
) -> Option<(String, Vec<Rule>)> {
    let before = diags.len();
    let mut cx = Ctx { file, text, diags };
    let doc = parse_toml(&mut cx, text)?;
    let mut description = String::new();
    let mut raws = Vec::new();
    let mut raw_lets: RawLets = (Vec::new(), Vec::new());
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "let" => read_lets(&mut cx, value, &mut raw_lets),
            "description" => match value.get_ref() {
                DeValue::String(s) => description = s.to_string(),
                _ => cx.at(value.span().start, "description must be a string"),
            },
            "resource" => match value.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => raws.push(raw_rule(&mut cx, t, item.span())),
                            _ => cx.at(
                                item.span().start,
                                "each resource must be a table ([[resource]])",
                            ),
                        }
                    }
                }
                _ => cx.at(
                    key.span().start,
                    "resource must be an array of tables: write [[resource]]",
                ),
            },
            _ => cx.unknown_key(key, TOP_KEYS),
        }
    }
    if raws.is_empty() && cx.diags.len() == before {
        cx.diags
            .push(Diagnostic::whole_file(file, "no [[resource]] in mapping"));
    }
    // A misspelled type counts as the type it most likely meant, so that the references
    // to it are not reported too; when nothing is likely, no reference is reported as
    // pointing nowhere until the type is fixed.
    let mut produced: BTreeSet<String> = raws
        .iter()
        .filter_map(|r| r.resource_type.as_ref().map(|t| t.0.clone()))
        .collect();
    produced.extend(
        raws.iter()
            .filter_map(|r| r.bad_type.flatten().map(str::to_string)),
    );
    let check_refs = raws.iter().all(|r| r.bad_type.is_none_or(|m| m.is_some()));
    // `[let]` expressions, in file order: each may use the shared ones and those above it.
    let refs = Refs {
        allowed: true,
        produced: &produced,
        checked: check_refs,
    };
    let lets = compile_lets(&mut cx, raw_lets, shared, tables, &refs);
    let mut rules = Vec::new();
    for (n, raw) in raws.into_iter().enumerate() {
        let (Some((rtype, _)), Some((id_text, id_span))) =
            (raw.resource_type.clone(), raw.id.clone())
        else {
            // A `type` given but unknown is reported where it is.
            let missing = match (&raw.resource_type, raw.bad_type) {
                (None, None) => Some("type"),
                _ if raw.id.is_none() => Some("id"),
                _ => None,
            };
            if let Some(missing) = missing {
                cx.at(
                    raw.span.start,
                    format!("resource #{} has no {missing:?}", n + 1),
                );
            }
            continue;
        };
        let checker = |cx: &mut Ctx<'_>, src: &str, span: &Range<usize>, allow_ref: bool| {
            let base = span.start + cx.quote_len(span.start);
            let refs = Refs {
                allowed: allow_ref,
                produced: &produced,
                checked: check_refs,
            };
            compile_expr(cx, src, base, tables, &refs, &lets)
        };
        let id = checker(&mut cx, &id_text, &id_span, false);
        let when = raw
            .when
            .as_ref()
            .map(|(src, span)| checker(&mut cx, src, span, false));
        let mut sets = Vec::new();
        let mut roots: Vec<String> = Vec::new();
        for (key, src, span) in &raw.sets {
            let key_text = key.get_ref().as_ref();
            let key_base = key.span().start + cx.quote_len(key.span().start);
            let steps = match parse_out_path(key_text) {
                Ok(steps) => Some(steps),
                Err(e) => {
                    cx.at(
                        key_base + e.offset,
                        format!("bad output path: {}", e.message),
                    );
                    None
                }
            };
            if let Some(Step::Key(k)) = steps.as_deref().and_then(<[Step]>::first) {
                let engine_sets = k == "resourceType" || k == "id";
                if let Some(problem) =
                    super::fhir_types::element_problem(&rtype, k).filter(|_| !engine_sets)
                {
                    cx.at(key_base, problem);
                }
            }
            if matches!(steps.as_deref().and_then(<[Step]>::first), Some(Step::Key(k)) if k == "resourceType" || k == "id")
            {
                cx.at(
                    key.span().start,
                    format!("{key_text:?} is set by the engine"),
                );
                continue;
            }
            let expr = checker(&mut cx, src, span, true);
            if let (Some(steps), Some(expr)) = (steps, expr) {
                let first = match steps.first() {
                    Some(Step::Key(k)) => k.as_str(),
                    _ => "",
                };
                let root = roots.iter().position(|r| r == first).unwrap_or_else(|| {
                    roots.push(first.to_string());
                    roots.len() - 1
                });
                sets.push(SetRule {
                    key: key_text.to_string(),
                    steps,
                    expr,
                    root,
                });
            }
        }
        let when_ok = when.as_ref().is_none_or(Option::is_some);
        if let (Some(id), true) = (id, when_ok) {
            rules.push(Rule {
                resource_type: rtype,
                each: raw.each.map(|e| e.0),
                id,
                when: when.flatten(),
                unique: raw.unique,
                roots: roots.len(),
                plan: super::plan::Plan::new(sets.iter().map(|s| s.steps.as_slice())),
                sets,
            });
        }
    }
    (cx.diags.len() == before).then_some((description, rules))
}

fn raw_rule<'i>(cx: &mut Ctx<'_>, t: &DeTable<'i>, span: Range<usize>) -> RawRule<'i> {
    let mut raw = RawRule {
        span,
        resource_type: None,
        bad_type: None,
        each: None,
        id: None,
        when: None,
        sets: Vec::new(),
        unique: false,
    };
    for (key, value) in t.iter() {
        let name = key.get_ref().as_ref();
        if !RESOURCE_KEYS.contains(&name) {
            cx.unknown_key(key, RESOURCE_KEYS);
            continue;
        }
        if name == "set" {
            match value.get_ref() {
                DeValue::Table(set) => {
                    let mut entries: Vec<_> = set.iter().collect();
                    // Keep file order (tables iterate sorted by key).
                    entries.sort_by_key(|(k, _)| k.span().start);
                    for (k, v) in entries {
                        match v.get_ref() {
                            DeValue::String(s) => raw.sets.push((k.clone(), s.to_string(), v.span())),
                            DeValue::Table(_) => cx.at(
                                k.span().start,
                                format!(
                                    "{:?} is a table; quote dotted output paths: \"a.b\" = \"...\"",
                                    k.get_ref().as_ref()
                                ),
                            ),
                            _ => cx.at(
                                v.span().start,
                                "expected an expression in a string, e.g. \"PID-5.1\" or \"'text'\"",
                            ),
                        }
                    }
                }
                _ => cx.at(value.span().start, "set must be a table: [resource.set]"),
            }
            continue;
        }
        if name == "unique" {
            match value.get_ref() {
                DeValue::Boolean(b) => raw.unique = *b,
                _ => cx.at(
                    value.span().start,
                    "unique must be true or false (a TOML boolean, without quotes)",
                ),
            }
            continue;
        }
        let DeValue::String(s) = value.get_ref() else {
            cx.at(value.span().start, format!("{name} must be a string"));
            continue;
        };
        let s = s.to_string();
        let vspan = value.span();
        match name {
            "type" => {
                if R4_RESOURCE_TYPES.contains(&s.as_str()) {
                    raw.resource_type = Some((s, vspan));
                } else {
                    let meant = did_you_mean(&s, R4_RESOURCE_TYPES.iter().copied());
                    let hint = meant.map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
                    cx.at(vspan.start, format!("unknown resource type {s:?}{hint}"));
                    raw.bad_type = Some(meant);
                }
            }
            "each" => {
                let b = s.as_bytes();
                let ok = b.len() == 3
                    && b[0].is_ascii_uppercase()
                    && b[1..]
                        .iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
                if let Some(problem) = unknown_segment(&s).filter(|_| ok) {
                    cx.at(vspan.start + cx.quote_len(vspan.start), problem);
                } else if ok {
                    raw.each = Some((s, vspan));
                } else {
                    cx.at(
                        vspan.start,
                        format!("each must be a segment name like \"OBX\", found {s:?}"),
                    );
                }
            }
            "id" => raw.id = Some((s, vspan)),
            "when" => raw.when = Some((s, vspan)),
            _ => {}
        }
    }
    raw
}

/// Whether the line holding byte `at` looks like `key = "expression"` with a double
/// quote inside the expression (`"if(eq(RXA-20, "CP"), ...)"`), which ends the TOML
/// string early.
fn inner_double_quote(text: &str, at: usize) -> bool {
    let start = text
        .get(..at)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let Some((key, value)) = line.split_once("= \"").or_else(|| line.split_once("=\"")) else {
        return false;
    };
    let key_quotes = key.matches('"').count();
    (key_quotes == 0 || key_quotes == 2) && value.matches('"').count() > 1
}

/// "unknown segment ..." for a name HL7 v2 does not define and that is not a `Z` segment.
fn unknown_segment(name: &str) -> Option<String> {
    if crate::hl7::is_known_segment(name) {
        return None;
    }
    let hint =
        crate::hl7::segment_hint(name).map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
    Some(format!(
        "unknown segment {name:?}{hint}; a site-defined segment starts with Z"
    ))
}

/// Parses and validates one expression; `base` is the file offset of its first char.
fn compile_expr(
    cx: &mut Ctx<'_>,
    src: &str,
    base: usize,
    tables: &TableMap,
    refs: &Refs<'_>,
    lets: &expr::Lets,
) -> Option<Expr> {
    match expr::parse_with(src, lets) {
        Ok(mut e) => {
            let before = cx.diags.len();
            check(cx, &e, base, tables, refs);
            bind_tables(&mut e, tables);
            (cx.diags.len() == before).then_some(e)
        }
        Err(e) => {
            cx.at(base + e.offset, e.message);
            None
        }
    }
}

/// Gives every `lookup()` of an expression the table it names (checked by [`check`]), so
/// that a run does not look tables up by name.
fn bind_tables(e: &mut Expr, tables: &TableMap) {
    match e {
        Expr::Call(c) => {
            if c.fid == functions::fid::LOOKUP {
                if let Some(Expr::Name { name, .. } | Expr::Str(name)) = c.args.first() {
                    c.table = tables.get(name.as_str()).cloned();
                }
            }
            for a in &mut c.args {
                bind_tables(a, tables);
            }
        }
        Expr::Let(l) => bind_tables(&mut l.expr, tables),
        Expr::Path { .. } | Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => {}
    }
}

/// What `ref()` and `refs()` may point to in one expression.
struct Refs<'a> {
    /// False in `id` and `when`.
    allowed: bool,
    /// The resource types the mapping produces.
    produced: &'a BTreeSet<String>,
    /// Whether a reference to a type not produced is reported.
    checked: bool,
}

fn check(cx: &mut Ctx<'_>, e: &Expr, base: usize, tables: &TableMap, refs: &Refs<'_>) {
    match e {
        Expr::Name { name, .. } if super::dicom::is_attribute(name) => {}
        Expr::Name { name, offset } => {
            cx.at(
                base + offset,
                format!("unexpected name {name:?} (write text in quotes: '{name}')"),
            );
        }
        Expr::Call(c) => {
            let at = base + c.offset;
            let Some(spec) = functions::spec(&c.name) else {
                let hint = did_you_mean(&c.name, FUNCTIONS.iter().map(|f| f.name))
                    .map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
                cx.at(at, format!("unknown function {:?}{hint}", c.name));
                return;
            };
            let n = c.args.len();
            if n < spec.min || spec.max.is_some_and(|m| n > m) {
                cx.at(at, format!("{}() {}, got {n}", c.name, spec.arity_text()));
                return;
            }
            if functions::PATH_ARGUMENT_FUNCTIONS.contains(&c.name.as_str()) {
                if c.args.iter().any(|a| matches!(a, Expr::Let(l) if l.failed)) {
                    // A [let] with errors, reported where it is defined.
                    return;
                }
                // all()'s second argument is a condition, any expression; its first may
                // be an expression of one segment's fields.
                let (paths, rest) = match c.name.as_str() {
                    "all" if !matches!(c.args[0], Expr::Path { .. }) => {
                        check_all_expression(cx, c, base);
                        (&[][..], &c.args[..])
                    }
                    "all" => c.args.split_at(1),
                    _ => (&c.args[..], &[][..]),
                };
                for a in paths {
                    if let Expr::Path { path, offset, .. } = a {
                        if let Some(problem) = unknown_segment(&path.segment) {
                            cx.at(base + offset, problem);
                        }
                    }
                    if !matches!(a, Expr::Path { path, .. } if path.field.is_some()) {
                        let message = if c.name == "all" {
                            "the first argument of all() must be an HL7 field path, e.g. all(NTE-3)"
                                .to_string()
                        } else {
                            format!(
                                "the arguments of {}() must be HL7 field paths, e.g. {}(PID-5[*])",
                                c.name, c.name
                            )
                        };
                        cx.at(at, message);
                        return;
                    }
                }
                for a in rest {
                    check(cx, a, base, tables, refs);
                }
                return;
            }
            let mut args: &[Expr] = &c.args;
            if matches!(c.name.as_str(), "rank" | "alike") {
                match &c.args[0] {
                    Expr::Path { path, offset, .. }
                        if path.field.is_none() && path.instance.is_none() =>
                    {
                        if let Some(problem) = unknown_segment(&path.segment) {
                            cx.at(base + offset, problem);
                        }
                    }
                    _ => {
                        cx.at(
                            at,
                            format!(
                                "the first argument of {0}() must be a segment name, e.g. \
                                 {0}(OBX, OBX-3.1, OBX-4)",
                                c.name
                            ),
                        );
                        return;
                    }
                }
                args = &c.args[1..];
            }
            if matches!(c.name.as_str(), "lookup" | "ref" | "refs") {
                let first = &c.args[0];
                let (name, off) = match first {
                    Expr::Name { name, offset } => (name.as_str(), base + offset),
                    Expr::Str(s) => (s.as_str(), at),
                    _ => {
                        let what = if c.name == "lookup" {
                            "a table name"
                        } else {
                            "a resource type"
                        };
                        cx.at(
                            at,
                            format!("the first argument of {}() must be {what}", c.name),
                        );
                        return;
                    }
                };
                if c.name == "lookup" {
                    if !tables.contains_key(name) {
                        let hint = did_you_mean(name, tables.keys().map(String::as_str))
                            .map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
                        cx.at(
                            off,
                            format!("unknown table {name:?}{hint} (tables are mappings/tables/<name>.csv)"),
                        );
                    }
                } else if !refs.allowed {
                    cx.at(
                        at,
                        format!(
                            "{}() cannot be used in id or when (ids are computed before references)",
                            c.name
                        ),
                    );
                } else if c.args.len() == 2 {
                    cx.at(
                        at,
                        format!(
                            "ref() takes 1 argument or 3, got 2: ref({name}) for the nearest {name}, \
                             or ref({name}, key, value) for the one whose key is the value, \
                             e.g. ref(Observation, concat(OBX-3.1, '|', OBX-4), concat(OBR-26.1.1, '|', OBR-26.2))"
                        ),
                    );
                } else if refs.checked && !refs.produced.contains(name) {
                    let hint = did_you_mean(name, refs.produced.iter().map(String::as_str))
                        .map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
                    cx.at(
                        off,
                        format!(
                            "{}() to {name:?}, which this mapping does not produce{hint}",
                            c.name
                        ),
                    );
                }
                args = &c.args[1..];
            }
            for a in args {
                check(cx, a, base, tables, refs);
            }
        }
        Expr::Path { path, offset, .. } => {
            if let Some(problem) = unknown_segment(&path.segment) {
                cx.at(base + offset, problem);
            }
        }
        // Checked where it is defined; only what depends on the place of use is left.
        Expr::Let(l) if l.uses_ref && !refs.allowed => cx.at(
            base + l.offset,
            format!(
                "${} calls ref() or refs(), which cannot be used in id or when (ids are computed before references)",
                l.name
            ),
        ),
        Expr::Let(_) | Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) => {}
    }
}

/// `all(EXPR, ...)` with an expression: it is evaluated in every instance of the
/// segment its first path names, so it must read one.
fn check_all_expression(cx: &mut Ctx<'_>, c: &super::expr::Call, base: usize) {
    let first = &c.args[0];
    if !reads_a_path(first) {
        cx.at(
            base + c.offset,
            "the first argument of all() must read an HL7 field: a path, e.g. all(NTE-3), \
             or an expression whose first path names the segment to go through, e.g. \
             all(if(eq(OBX-2, 'ED'), OBX-5.5, OBX-5))"
                .to_string(),
        );
    }
}

/// Whether an expression reads an HL7 path ([`super::eval::first_path`] finds one), or
/// uses a `[let]` with errors (reported where it is defined, not again here).
fn reads_a_path(e: &Expr) -> bool {
    match e {
        Expr::Path { .. } => true,
        Expr::Call(c) => c.args.iter().any(reads_a_path),
        Expr::Let(l) => l.failed || reads_a_path(&l.expr),
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => false,
    }
}

/// Whether an expression calls `ref()` or `refs()`.
fn uses_ref(e: &Expr) -> bool {
    match e {
        Expr::Call(c) => {
            matches!(c.fid, functions::fid::REF | functions::fid::REFS)
                || c.args.iter().any(uses_ref)
        }
        Expr::Let(l) => l.uses_ref,
        _ => false,
    }
}
