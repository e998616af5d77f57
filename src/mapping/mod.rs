//! Declarative mappings: `mappings/<name>.toml` turns one HL7 v2 message into a list of
//! FHIR R4 resources ([`Record`]s), with lookup tables from
//! `mappings/tables/<name>.csv`. No scripting: HL7 paths, literals and a fixed function
//! library (see `mappings/README.md`).
//!
//! Layout:
//! - `file`      — the TOML model, read with spans; validation with file:line:column.
//! - `expr`      — the expression parser.
//! - `eval`      — values, the context rule for `each`, and function evaluation.
//! - `functions` — the function catalogue and pure functions (dates, numbers, hash).
//! - `tables`    — lookup tables.
//! - `output`    — output paths, and building a resource in a tree where paths meet.
//! - `plan`      — each rule's output shape, laid out at load; writes the records.
//!
//! A run is two passes: first every resource instance and its id (so `ref` sees
//! resources declared later), then their fields. Resources come out in file order, and
//! for `each` in segment order; each gets `resourceType`, `id` and `meta.source`.
//! Depends on `hl7` and `diag` only; logs nothing.

pub mod cases;
mod datatypes;
mod dicom;
mod eval;
mod expr;
mod fhir_types;
mod file;
mod functions;
mod output;
mod plan;
mod tables;

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::hl7::Message;
use crate::record::Record;

pub use eval::Value;
pub use fhir_types::R4_RESOURCE_TYPES;
pub use file::SHARED_FILE;
pub use functions::FUNCTIONS;
pub use tables::Table;

use eval::{Instance, Scope, Trace};
use file::Rule;
use output::Step;

/// Every mapping of one directory (`*.toml`) with its lookup tables (`tables/*.csv`).
#[derive(Clone, Debug, Default)]
pub struct MappingSet {
    mappings: BTreeMap<String, Mapping>,
}

/// One compiled mapping file.
#[derive(Clone, Debug)]
pub struct Mapping {
    name: String,
    description: String,
    rules: Vec<Rule>,
    /// The data type functions' tables, picked from the directory's (each `lookup()`
    /// holds its own, [`expr::Call::table`]).
    dt: eval::DatatypeTables,
    /// How many distinct paths its expressions read (see [`expr::number_paths`]).
    paths: usize,
    /// How many of its `[let]` names have one value per run (see [`expr::number_lets`]).
    constants: usize,
}

/// Facts about one run that go into every resource.
#[derive(Clone, Debug, Default)]
pub struct RunContext {
    /// Goes to `meta.source` (listener and journal id).
    pub source: String,
    /// The receiving listener's `facility` (halong.toml), what `facility()` gives; empty
    /// when none is set.
    pub facility: String,
}

/// A mapping failure at run time, naming the resource instance and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource} {field}: {message}")]
pub struct MapError {
    /// e.g. "Observation #3 (OBX 3)".
    pub resource: String,
    /// The output path or `id` / `when`.
    pub field: String,
    pub message: String,
}

/// Whether `path` is a mapping file of its directory: `*.toml`, but not the shared
/// `[let]` names ([`SHARED_FILE`]).
pub fn is_mapping_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        && path.file_name().is_some_and(|n| n != SHARED_FILE)
}

/// What to tell someone who names `shared` as a mapping: what that file is.
pub fn not_a_mapping(name: &str) -> Option<&'static str> {
    (format!("{name}.toml") == SHARED_FILE)
        .then_some(" (shared.toml holds the [let] names every mapping uses; it is not a mapping)")
}

impl MappingSet {
    /// Loads every mapping of `dir`; all problems at once, each with file:line:column.
    pub fn load(dir: &std::path::Path) -> Result<MappingSet, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![Diagnostic::whole_file(
                    dir,
                    format!("cannot read mapping directory: {e}"),
                )])
            }
        };
        let tables = tables::load_dir(&dir.join("tables"), &mut diags);
        let mut paths: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_mapping_file(p))
            .collect();
        paths.sort();
        let shared_path = dir.join(file::SHARED_FILE);
        let shared = match std::fs::read_to_string(&shared_path) {
            Ok(text) => file::load_shared(&shared_path, &text, &tables, &mut diags),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => {
                diags.push(Diagnostic::whole_file(
                    &shared_path,
                    format!("cannot read shared [let] names: {e}"),
                ));
                file::unreadable_shared()
            }
        };
        let mut mappings = BTreeMap::new();
        for path in paths {
            let Some(name) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(Diagnostic::whole_file(
                        &path,
                        format!("cannot read mapping: {e}"),
                    ));
                    continue;
                }
            };
            if let Some((description, mut rules)) =
                file::load(&path, &text, &tables, &shared, &mut diags)
            {
                let mut numbers = std::collections::HashMap::new();
                let mut constants = std::collections::HashMap::new();
                for r in &mut rules {
                    let exprs = r.sets.iter_mut().map(|s| &mut s.expr);
                    for e in exprs.chain([&mut r.id]).chain(r.when.as_mut()) {
                        expr::number_paths(e, &mut numbers);
                        expr::number_lets(e, &mut constants);
                    }
                }
                let m = Mapping {
                    name: name.clone(),
                    description,
                    rules,
                    dt: eval::DatatypeTables::pick(&tables),
                    paths: numbers.len(),
                    constants: constants.len(),
                };
                mappings.insert(name, m);
            }
        }
        if diags.is_empty() {
            Ok(MappingSet { mappings })
        } else {
            diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(diags)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Mapping> {
        self.mappings.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.mappings.keys().map(String::as_str)
    }
}

/// A FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
fn valid_fhir_id(id: &str) -> bool {
    // One table lookup a byte: every id of every resource is checked.
    const OK: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
            b += 1;
        }
        t
    };
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| OK[usize::from(b)])
}

impl Mapping {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Maps one message to its resources.
    pub fn run(&self, msg: &Message, ctx: &RunContext) -> Result<Vec<Record>, MapError> {
        self.run_traced(msg, None, ctx, None)
    }

    /// Maps one received DICOM instance (its attributes) to its resources.
    pub fn run_dicom(
        &self,
        attrs: &crate::dicom::Attributes,
        ctx: &RunContext,
    ) -> Result<Vec<Record>, MapError> {
        self.run_traced(dicom::no_message(), Some(attrs), ctx, None)
    }

    /// Maps one message and reports what it did not read: every non-empty field (and
    /// every segment) of the message that no expression of this mapping looked at. For
    /// `halong map`'s loss report; the engine calls [`Mapping::run`].
    pub fn run_with_loss_report(
        &self,
        msg: &Message,
        ctx: &RunContext,
    ) -> (Result<Vec<Record>, MapError>, Vec<String>) {
        let trace = Trace::default();
        let result = self.run_traced(msg, None, ctx, Some(&trace));
        (result, trace.unread(msg))
    }

    fn run_traced(
        &self,
        msg: &Message,
        dicom: Option<&crate::dicom::Attributes>,
        ctx: &RunContext,
        trace: Option<&Trace>,
    ) -> Result<Vec<Record>, MapError> {
        let dt = self.dt.get();
        let ranks = eval::Ranks::default();
        let constants = eval::Constants::new(self.constants);
        let finds = eval::Finds::default();
        let run = eval::RunMemo {
            ranks: &ranks,
            constants: &constants,
            finds: &finds,
        };
        // Pass 1: instances and ids.
        let mut instances: Vec<Instance> = Vec::new();
        // Resources made so far, per type (a mapping makes a handful of types).
        let mut counts: Vec<(&str, usize)> = Vec::new();
        let mut contexts: Vec<Option<usize>> = Vec::new();
        for (ri, rule) in self.rules.iter().enumerate() {
            contexts.clear();
            match &rule.each {
                Some(seg) => contexts.extend(msg.segments(seg).map(Some)),
                None => contexts.push(None),
            }
            for (k, &seg) in contexts.iter().enumerate() {
                let n = counts
                    .iter()
                    .find(|(t, _)| *t == rule.resource_type)
                    .map_or(0, |&(_, n)| n)
                    + 1;
                let scope = Scope {
                    msg,
                    seg,
                    instances: &[],
                    dicom,
                    trace,
                    dt: &dt,
                    facility: &ctx.facility,
                    patient: std::cell::OnceCell::new(),
                    resolved: eval::Resolved::default(),
                    nearest: eval::Nearest::default(),
                    reads: None,
                    run,
                };
                // Labels are only built for an error.
                let err = |field: &str, message: String| MapError {
                    resource: eval::label(rule, n, k + 1),
                    field: field.to_string(),
                    message,
                };
                if let Some(when) = &rule.when {
                    if !scope.eval(when).map_err(|m| err("when", m))?.truthy() {
                        continue;
                    }
                }
                let id = scope.eval(&rule.id).map_err(|m| err("id", m))?;
                let id = match id {
                    Value::Str(s) | Value::Num(s) => s.into_owned(),
                    Value::Absent => {
                        return Err(err("id", "the id expression gave no value".to_string()))
                    }
                    other => {
                        return Err(err(
                            "id",
                            format!("the id expression gave {other:?}, not text"),
                        ))
                    }
                };
                if !valid_fhir_id(&id) {
                    return Err(err(
                        "id",
                        format!("{id:?} is not a valid FHIR id (A-Z a-z 0-9 - . and at most 64)"),
                    ));
                }
                match counts.iter_mut().find(|(t, _)| *t == rule.resource_type) {
                    Some(c) => c.1 = n,
                    None => counts.push((&rule.resource_type, n)),
                }
                instances.push(Instance::new(ri, &rule.resource_type, seg, id, n, k + 1));
            }
        }
        let reads = eval::Reads::new(self.paths);
        let out = self.fields(msg, dicom, ctx, trace, &instances, &dt, &reads, run)?;
        self.one_record_per_id(&instances, &out)?;
        Ok(out)
    }

    /// Two records of one message under one id are one record in the store, the later
    /// replacing the earlier. For a rule with `unique = true` (results, reports) two
    /// different ones are a mapping error: its id rule does not tell them apart (two
    /// results with one code and no set IDs), and one would be lost without a word.
    /// The same record twice is no conflict.
    fn one_record_per_id(&self, instances: &[Instance], out: &[Record]) -> Result<(), MapError> {
        if instances.len() < 2 || !self.rules.iter().any(|r| r.unique) {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..instances.len()).collect();
        // Stable: of two under one id, the earlier comes first.
        order.sort_by(|&a, &b| instances[a].reference.cmp(&instances[b].reference));
        for pair in order.windows(2) {
            let (a, b) = (&instances[pair[0]], &instances[pair[1]]);
            let unique = self.rules[a.rule].unique || self.rules[b.rule].unique;
            if a.reference != b.reference || !unique {
                continue;
            }
            if out[pair[0]] != out[pair[1]] {
                let label =
                    |i: &Instance| eval::label(&self.rules[i.rule], i.ordinal, i.each_index);
                return Err(MapError {
                    resource: label(b),
                    field: "id".to_string(),
                    message: format!(
                        "{} has the same id ({}) and other content: the id rule does not tell them apart, and the store would keep only one",
                        label(a),
                        a.id()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Pass 2: the fields of every instance.
    #[allow(clippy::too_many_arguments)]
    fn fields<'a>(
        &'a self,
        msg: &'a Message,
        dicom: Option<&'a crate::dicom::Attributes>,
        ctx: &'a RunContext,
        trace: Option<&'a Trace>,
        instances: &'a [Instance],
        dt: &'a datatypes::Tables<'a>,
        reads: &'a eval::Reads<'a>,
        run: eval::RunMemo<'a>,
    ) -> Result<Vec<Record>, MapError> {
        let mut out = Vec::with_capacity(instances.len());
        let mut builder = crate::record::Builder::new();
        // Only for a rule without a plan, or a resource whose paths meet.
        let mut tree: Option<output::Tree> = None;
        let mut values: Vec<Value<'a>> = Vec::new();
        let mut scratch = plan::Scratch::default();
        // Data type objects of the resource being made, written ahead (Value::Frag).
        let mut side = crate::record::Builder::new();
        let mut fragments = Vec::new();
        for inst in instances {
            let rule = &self.rules[inst.rule];
            reads.next_resource();
            let scope = Scope {
                msg,
                seg: inst.seg,
                instances,
                dicom,
                trace,
                dt,
                facility: &ctx.facility,
                patient: std::cell::OnceCell::new(),
                resolved: eval::Resolved::default(),
                nearest: eval::Nearest::default(),
                // Without a trace: the loss report notes every read.
                reads: trace.is_none().then_some(reads),
                run,
            };
            let err = |set: &file::SetRule, message: String| MapError {
                resource: eval::label(rule, inst.ordinal, inst.each_index),
                field: set.key.clone(),
                message,
            };
            values.clear();
            side.clear();
            fragments.clear();
            // The tree takes objects apart: it gets a value written ahead evaluated
            // again as a value.
            let for_tree = |set: &'a file::SetRule, v: Value<'a>| {
                if v.written_ahead() {
                    scope.eval(&set.expr)
                } else {
                    Ok(v)
                }
            };
            if let Some(plan) = &rule.plan {
                for (k, set) in rule.sets.iter().enumerate() {
                    match scope.eval_set(&set.expr, &mut side, &mut fragments) {
                        Ok(v) => values.push(v),
                        Err(m) => {
                            // A path that met an earlier one in the tree would have
                            // stopped the resource before this expression: its error
                            // comes first, as when each value is set as it is made.
                            let root = start_tree(&mut tree, rule, inst, &ctx.source);
                            for (set, value) in rule.sets[..k].iter().zip(values.drain(..)) {
                                let value = for_tree(set, value).map_err(|m| err(set, m))?;
                                set_value_at(root, &set.steps, Some(set.root), value)
                                    .map_err(|m| err(set, m))?;
                            }
                            return Err(err(set, m));
                        }
                    }
                }
                let b = &mut builder;
                let mark = b.mark();
                b.string(&rule.resource_type);
                b.key("resourceType");
                b.string(inst.id());
                b.key("id");
                if !ctx.source.is_empty() {
                    let meta = b.mark();
                    b.string(&ctx.source);
                    b.key("source");
                    b.close_object(meta);
                    b.key("meta");
                }
                let ahead = plan::Ahead {
                    side: &side,
                    fragments: &fragments,
                };
                if plan.members(&values, ahead, &mut scratch, b).is_ok() {
                    b.close_object(mark);
                    out.push(b.finish().expect("a resource has its type and id"));
                    continue;
                }
                // Two paths meet in this resource: what was written goes, and the tree
                // merges the values or names the conflict.
                b.finish();
            }
            let root = start_tree(&mut tree, rule, inst, &ctx.source);
            let mut evaluated = values.drain(..);
            for set in &rule.sets {
                let value = match evaluated.next() {
                    Some(v) => for_tree(set, v),
                    None => scope.eval(&set.expr),
                }
                .map_err(|m| err(set, m))?;
                set_value_at(root, &set.steps, Some(set.root), value).map_err(|m| err(set, m))?;
            }
            out.push(
                root.to_record(&mut builder)
                    .expect("a resource has its type and id"),
            );
        }
        Ok(out)
    }
}

/// The run's tree (made when first needed), ready for one resource: empty but for what
/// the engine sets (`resourceType`, `id`, `meta.source`).
fn start_tree<'t, 'a>(
    tree: &'t mut Option<output::Tree<'a>>,
    rule: &'a Rule,
    inst: &'a Instance,
    source: &'a str,
) -> &'t mut output::Tree<'a> {
    let root = tree.get_or_insert_with(output::Tree::new);
    root.start(rule.roots);
    root.put_text(None, "resourceType", &rule.resource_type);
    root.put_text(None, "id", inst.id());
    if !source.is_empty() {
        root.put_text(Some("meta"), "source", source);
    }
    root
}

/// Sets a value at an output path (whose first element is the rule's top-level element
/// number `at`, `None`: found by name); lists spread over `[*]` by index.
fn set_value_at<'a>(
    root: &mut output::Tree<'a>,
    steps: &'a [Step],
    at: Option<usize>,
    value: Value<'a>,
) -> Result<(), String> {
    if !value.present() {
        // Nothing to set: the output path is not even read.
        return Ok(());
    }
    match value {
        // Item `i` goes to index `i`, so that several `[*]` paths fed by the same
        // repetitions stay aligned.
        Value::List(items) if steps.contains(&Step::All) => {
            for (i, item) in items.into_iter().enumerate() {
                if item.present() {
                    root.set_at(steps, at, i, item)?;
                }
            }
            Ok(())
        }
        v => root.set_at(steps, at, 0, v),
    }
}

#[cfg(test)]
mod tests;
