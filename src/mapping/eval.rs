//! Evaluating expressions against one message in one context.
//!
//! Context rule: while a resource with `each = "SEG"` is evaluated, the current SEG
//! instance is the context. A path to SEG (without an explicit instance) resolves in
//! that instance; a path to another segment type resolves to the nearest instance of
//! that type before the context segment, else to the first in the message. Without a
//! context, paths resolve to the first instance. `SEG[n]` always means the n-th in the
//! message. HL7's null marker `""` evaluates as absent in this version.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::expr::{Call, Expr};
use super::functions;
use super::tables::Table;
use crate::hl7::{Message, Path, Repetition};

/// The value of an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Absent,
    Str(String),
    /// A number, kept as its decimal text ("5.10").
    Num(String),
    Bool(bool),
    List(Vec<Value>),
    /// A JSON object, e.g. a reference.
    Json(Json),
}

impl Value {
    pub fn is_absent(&self) -> bool {
        matches!(self, Value::Absent)
    }

    pub fn truthy(&self) -> bool {
        match self {
            Value::Absent => false,
            Value::Bool(b) => *b,
            Value::List(items) => items.iter().any(|v| !v.is_absent()),
            Value::Str(s) => !s.is_empty(),
            Value::Num(_) | Value::Json(_) => true,
        }
    }

    /// Text form; `None` when absent. Lists join their present items with ",".
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Absent => None,
            Value::Str(s) | Value::Num(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().filter_map(Value::text).collect();
                (!parts.is_empty()).then(|| parts.join(","))
            }
            Value::Json(j) => Some(j.to_string()),
        }
    }

    /// JSON for output; `None` when absent.
    pub fn to_json(&self) -> Option<Json> {
        match self {
            Value::Absent => None,
            Value::Str(s) => (!s.is_empty()).then(|| Json::String(s.clone())),
            Value::Num(n) => Some(
                n.parse::<serde_json::Number>()
                    .map_or_else(|_| Json::String(n.clone()), Json::Number),
            ),
            Value::Bool(b) => Some(Json::Bool(*b)),
            Value::List(items) => {
                let out: Vec<Json> = items.iter().filter_map(Value::to_json).collect();
                (!out.is_empty()).then_some(Json::Array(out))
            }
            Value::Json(j) => Some(j.clone()),
        }
    }
}

/// A resource instance found in the first pass.
#[derive(Clone, Debug)]
pub struct Instance {
    pub rule: usize,
    pub resource_type: String,
    /// Context segment index (`each`), `None` for a resource without `each`.
    pub seg: Option<usize>,
    pub id: String,
    /// "Observation #3 (OBX 3)", for errors.
    pub label: String,
}

/// Where an expression is evaluated.
pub struct Scope<'a> {
    pub msg: &'a Message,
    /// Context segment index.
    pub seg: Option<usize>,
    pub instances: &'a [Instance],
    pub tables: &'a BTreeMap<String, Table>,
    /// The DICOM instance, when the input is one (see `mapping::dicom`).
    pub dicom: Option<&'a crate::dicom::Attributes>,
}

fn map1(v: Value, f: &mut impl FnMut(String) -> Result<Value, String>) -> Result<Value, String> {
    match v {
        Value::Absent => Ok(Value::Absent),
        Value::List(items) => {
            let out = items
                .into_iter()
                .map(|i| map1(i, f))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if out.iter().all(Value::is_absent) {
                Value::Absent
            } else {
                Value::List(out)
            })
        }
        other => match other.text() {
            Some(t) => f(t),
            None => Ok(Value::Absent),
        },
    }
}

fn name_arg(e: &Expr) -> &str {
    match e {
        Expr::Name { name, .. } | Expr::Str(name) => name,
        _ => "",
    }
}

impl Scope<'_> {
    /// The segment a path resolves to under the context rule.
    pub fn resolve(&self, path: &Path) -> Option<usize> {
        if let Some(n) = path.instance {
            return self.msg.segment_index(&path.segment, n);
        }
        let Some(cur) = self.seg else {
            return self.msg.segment_index(&path.segment, 1);
        };
        if self.msg.segment_name(cur) == path.segment {
            return Some(cur);
        }
        (0..cur)
            .rev()
            .find(|&i| self.msg.segment_name(i) == path.segment)
            .or_else(|| self.msg.segment_index(&path.segment, 1))
    }

    fn path_value(&self, path: &Path) -> Value {
        let Some(seg) = self.resolve(path) else {
            return Value::Absent;
        };
        let Some(fp) = &path.field else {
            return Value::Str(self.msg.segment_text(seg).to_string());
        };
        let decode = |raw: &str| {
            if raw.is_empty() || raw == "\"\"" {
                Value::Absent
            } else {
                Value::Str(self.msg.unescape(raw).into_owned())
            }
        };
        match fp.repetition {
            Repetition::All => {
                let items: Vec<Value> = self.msg.raws_in(seg, fp).into_iter().map(decode).collect();
                if items.iter().all(Value::is_absent) {
                    Value::Absent
                } else {
                    Value::List(items)
                }
            }
            Repetition::Index(_) => self.msg.raw_in(seg, fp).map_or(Value::Absent, decode),
        }
    }

    pub fn eval(&self, e: &Expr) -> Result<Value, String> {
        match e {
            Expr::Path { path, .. } => Ok(self.path_value(path)),
            Expr::Str(s) => Ok(if s.is_empty() {
                Value::Absent
            } else {
                Value::Str(s.clone())
            }),
            Expr::Num(n) => Ok(Value::Num(n.clone())),
            Expr::Name { name, .. } => {
                Ok(super::dicom::value(name, self.dicom)
                    .unwrap_or_else(|| Value::Str(name.clone())))
            }
            Expr::Call(c) => self.call(c),
        }
    }

    fn call(&self, c: &Call) -> Result<Value, String> {
        let arg = |i: usize| -> Result<Value, String> {
            match c.args.get(i) {
                Some(e) => self.eval(e),
                None => Ok(Value::Absent),
            }
        };
        let fail = |msg: String| format!("{}: {msg}", c.text);
        match c.name.as_str() {
            "exists" => Ok(Value::Bool(arg(0)?.truthy())),
            "eq" => {
                let (a, b) = (arg(0)?.text(), arg(1)?.text());
                Ok(Value::Bool(a == b))
            }
            "in" => {
                let Some(x) = arg(0)?.text() else {
                    return Ok(Value::Bool(false));
                };
                for i in 1..c.args.len() {
                    if arg(i)?.text().as_deref() == Some(x.as_str()) {
                        return Ok(Value::Bool(true));
                    }
                }
                Ok(Value::Bool(false))
            }
            "not" => Ok(Value::Bool(!arg(0)?.truthy())),
            "if" => {
                if arg(0)?.truthy() {
                    arg(1)
                } else {
                    arg(2)
                }
            }
            "coalesce" => {
                for i in 0..c.args.len() {
                    let v = arg(i)?;
                    if !v.is_absent() {
                        return Ok(v);
                    }
                }
                Ok(Value::Absent)
            }
            "date" => map1(arg(0)?, &mut |t| {
                functions::date(&t).map(Value::Str).map_err(fail)
            }),
            "datetime" => {
                let zone = arg(1)?.text();
                map1(arg(0)?, &mut |t| {
                    functions::datetime(&t, zone.as_deref())
                        .map(Value::Str)
                        .map_err(fail)
                })
            }
            "decimal" => map1(arg(0)?, &mut |t| {
                functions::decimal(&t).map(Value::Num).map_err(fail)
            }),
            "integer" => map1(arg(0)?, &mut |t| {
                functions::integer(&t).map(Value::Num).map_err(fail)
            }),
            "trim" | "upper" | "lower" => map1(arg(0)?, &mut |t| {
                let t = match c.name.as_str() {
                    "upper" => t.trim().to_uppercase(),
                    "lower" => t.trim().to_lowercase(),
                    _ => t.trim().to_string(),
                };
                Ok(if t.is_empty() {
                    Value::Absent
                } else {
                    Value::Str(t)
                })
            }),
            "concat" => {
                let mut out = String::new();
                let mut any = false;
                for i in 0..c.args.len() {
                    if let Some(t) = arg(i)?.text() {
                        out.push_str(&t);
                        any = true;
                    }
                }
                Ok(if any && !out.trim().is_empty() {
                    Value::Str(out)
                } else {
                    Value::Absent
                })
            }
            "split" => {
                let sep = arg(1)?.text().unwrap_or_default();
                match arg(0)? {
                    Value::List(items) => {
                        let mut out = Vec::new();
                        for item in items.iter().filter_map(Value::text) {
                            if let Value::List(p) = functions::split(&item, &sep) {
                                out.extend(p);
                            }
                        }
                        Ok(if out.is_empty() {
                            Value::Absent
                        } else {
                            Value::List(out)
                        })
                    }
                    v => Ok(v
                        .text()
                        .map_or(Value::Absent, |t| functions::split(&t, &sep))),
                }
            }
            "join" => {
                let sep = arg(1)?.text().unwrap_or_default();
                let parts: Vec<String> = match arg(0)? {
                    Value::List(items) => items.iter().filter_map(Value::text).collect(),
                    v => v.text().into_iter().collect(),
                };
                Ok(if parts.is_empty() {
                    Value::Absent
                } else {
                    Value::Str(parts.join(&sep))
                })
            }
            "lookup" => {
                let name = c.args.first().map_or("", name_arg);
                let Some(table) = self.tables.get(name) else {
                    return Err(fail(format!("unknown table {name:?}")));
                };
                let default = arg(2)?;
                map1(arg(1)?, &mut |t| {
                    Ok(match table.get(t.trim()) {
                        Some(v) => Value::Str(v.to_string()),
                        None => default.clone(),
                    })
                })
            }
            "hash" => {
                let mut parts = Vec::with_capacity(c.args.len());
                let mut any = false;
                for i in 0..c.args.len() {
                    let t = arg(i)?.text();
                    any |= t.is_some();
                    parts.push(t.unwrap_or_default());
                }
                Ok(if any {
                    Value::Str(functions::hash(&parts))
                } else {
                    Value::Absent
                })
            }
            "ref" => {
                let t = c.args.first().map_or("", name_arg);
                Ok(self.nearest(t).map_or(Value::Absent, reference))
            }
            "refs" => {
                let t = c.args.first().map_or("", name_arg);
                let items: Vec<Value> = self.in_group(t).map(reference).collect();
                Ok(if items.is_empty() {
                    Value::Absent
                } else {
                    Value::List(items)
                })
            }
            other => Err(fail(format!("unknown function {other:?}"))),
        }
    }

    /// The instance of `t` whose context segment is nearest before or at the current
    /// context, else the first one.
    fn nearest(&self, t: &str) -> Option<&Instance> {
        let of_type = || self.instances.iter().filter(move |i| i.resource_type == t);
        let before = self.seg.and_then(|cur| {
            of_type()
                .filter(|i| i.seg.is_some_and(|s| s <= cur))
                .max_by_key(|i| i.seg.unwrap_or(0))
        });
        before.or_else(|| of_type().next())
    }

    /// Instances of `t` whose context segment lies in the current context's group: from
    /// the context segment up to the next segment with the same name. Without a context,
    /// every instance of `t`.
    fn in_group<'s>(&'s self, t: &'s str) -> impl Iterator<Item = &'s Instance> + 's {
        let range = self.seg.map(|cur| {
            let name = self.msg.segment_name(cur);
            let end =
                (cur + 1..self.msg.segment_count()).find(|&i| self.msg.segment_name(i) == name);
            (cur, end.unwrap_or(usize::MAX))
        });
        self.instances.iter().filter(move |i| {
            i.resource_type == t
                && match (range, i.seg) {
                    (None, _) => true,
                    (Some((start, end)), Some(s)) => s >= start && s < end,
                    (Some(_), None) => false,
                }
        })
    }
}

fn reference(i: &Instance) -> Value {
    Value::Json(json!({ "reference": format!("{}/{}", i.resource_type, i.id) }))
}
