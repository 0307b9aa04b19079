//! Datablock patches: small, atomic edits to a MessagePack value.
//!
//! This module is a protocol contract: clients (in Python or anything else)
//! must implement exactly the semantics described here.
//!
//! # Wire form
//!
//! A datablock's data is any MessagePack value. A *patch* is a MessagePack
//! array of *operations*, applied in order. Each operation is a map whose keys
//! are strings; every key below is the complete set allowed for that op, and
//! any other key, a repeated key, a missing required key or a value of the
//! wrong type makes the whole patch malformed (no leniency):
//!
//! - `{"op": "set", "path": P, "value": V}`
//! - `{"op": "remove", "path": P}`
//! - `{"op": "splice", "path": P, "index": I, "delete": D, "insert": X}`,
//!   where `delete` (default 0) and `insert` (default: empty, of the target's
//!   kind) may be left out.
//!
//! A patch holds at most [`MAX_PATCH_OPS`] operations. Operations are numbered
//! from 0 in errors.
//!
//! # Paths
//!
//! A path `P` is an array of at most [`MAX_PATH_STEPS`] steps, followed from
//! the root value. A step is either
//!
//! - a string: selects, in a map, the entry whose key is that string;
//! - a non-negative integer: selects, in an array, the element at that index,
//!   or, in a map, the entry whose key is that integer.
//!
//! Any other step (negative integer, float, nil, ...) is malformed. A string
//! step never selects an array element, a string step only matches string
//! keys and an integer step only matches integer keys (never floats). If a map
//! holds the same key more than once, the first matching entry is used.
//! Stepping into anything that is not a map or an array is an error. The empty
//! path designates the root value itself.
//!
//! # Operations
//!
//! - **set**: with an empty path, replaces the whole value. Otherwise every
//!   step but the last must exist and lead to the *parent*, and the last step
//!   is applied to it:
//!   - parent is a map: if the key exists its value is replaced in place (the
//!     entry keeps its position), else a new entry is appended at the end (its
//!     key is a string for a string step, an integer for an integer step);
//!   - parent is an array: the last step must be an integer `i`; `i < len`
//!     replaces the element, `i == len` appends, `i > len` is an error;
//!   - any other parent is an error.
//! - **remove**: the path must not be empty. The parent map must contain the
//!   key (the entry is removed, the others keep their order), or the parent
//!   array must have `index < len` (the element is removed, later ones shift
//!   down). Anything else is an error.
//! - **splice**: the value at the path (the root for an empty path) must be an
//!   array, a bin or a string. `delete` elements starting at `index` are
//!   removed and the elements of `insert` are put in their place; it requires
//!   `index <= len` and `index + delete <= len`. For an array `insert` must be
//!   an array; for a bin, `insert` must be a bin (byte splice); for a string,
//!   `insert` must be a string and `index`, `delete` count *bytes* of the
//!   UTF-8 encoding: both `index` and `index + delete` must fall on character
//!   boundaries. A target or inserted string that is not valid UTF-8 is an
//!   error. When `insert` is absent nothing is inserted, whatever the kind.
//!
//! # Atomicity
//!
//! A patch is atomic: if any operation fails, the value is left exactly as it
//! was before the patch. This is done without copying the value: each applied
//! operation records what it replaced or removed, and on failure these records
//! are undone in reverse order.
//!
//! In Rust, an absent `insert` is represented by [`Value::Nil`] in
//! [`PatchOp::Splice`] (an explicit `nil` on the wire is malformed), so
//! [`Patch::from_value`] and [`Patch::to_value`] are inverses.

use std::mem;

use rmpv::{Utf8String, Value};

/// The most operations a patch may hold (checked by [`Patch::from_value`]).
pub const MAX_PATCH_OPS: usize = 65_536;
/// The most steps a path may have (checked by [`Patch::from_value`]).
pub const MAX_PATH_STEPS: usize = 64;

/// One step of a path: a map key or an array index (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub enum PathStep {
    /// Selects the map entry whose key is this string.
    Key(String),
    /// Selects an array element, or the map entry whose key is this integer.
    Index(u64),
}

/// One operation of a patch (see the module doc for the exact semantics).
#[derive(Debug, Clone, PartialEq)]
pub enum PatchOp {
    /// Replaces or adds the value at `path`.
    Set { path: Vec<PathStep>, value: Value },
    /// Removes the map entry or array element at `path` (non-empty).
    Remove { path: Vec<PathStep> },
    /// Replaces `delete` items from `index` of the array, bin or string at
    /// `path` with those of `insert` (an array, bin or string, or
    /// [`Value::Nil`] for "nothing").
    Splice {
        path: Vec<PathStep>,
        index: u64,
        delete: u64,
        insert: Value,
    },
}

/// An ordered list of operations, applied atomically.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Patch {
    pub ops: Vec<PatchOp>,
}

/// Why a patch could not be parsed or applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("a patch must be an array of operations, not {found}")]
    NotAnArray { found: &'static str },
    #[error("a patch may hold at most {max} operations, but this one holds {count}", max = MAX_PATCH_OPS)]
    TooManyOps { count: usize },
    #[error("patch operation {op} is malformed: {reason}")]
    Malformed { op: usize, reason: String },
    #[error("patch operation {op} failed, so the patch was not applied: {reason}")]
    Failed { op: usize, reason: String },
}

impl std::fmt::Display for PathStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathStep::Key(key) => write!(f, "{key:?}"),
            PathStep::Index(index) => write!(f, "{index}"),
        }
    }
}

impl PathStep {
    fn matches_key(&self, key: &Value) -> bool {
        match (self, key) {
            (PathStep::Key(step), Value::String(key)) => key.as_str() == Some(step.as_str()),
            (PathStep::Index(step), Value::Integer(key)) => key.as_u64() == Some(*step),
            _ => false,
        }
    }

    fn to_value(&self) -> Value {
        match self {
            PathStep::Key(key) => Value::from(key.as_str()),
            PathStep::Index(index) => Value::from(*index),
        }
    }
}

impl Patch {
    /// Parses the wire form: an array of operation maps. Takes the value by
    /// value so inserted data is moved, not copied.
    pub fn from_value(v: Value) -> Result<Patch, PatchError> {
        let items = match v {
            Value::Array(items) => items,
            other => {
                return Err(PatchError::NotAnArray {
                    found: a_kind(&other),
                });
            }
        };
        if items.len() > MAX_PATCH_OPS {
            return Err(PatchError::TooManyOps { count: items.len() });
        }
        let ops = items
            .into_iter()
            .enumerate()
            .map(|(op, item)| parse_op(item).map_err(|reason| PatchError::Malformed { op, reason }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Patch { ops })
    }

    /// The wire form of this patch (the inverse of [`Patch::from_value`]).
    pub fn to_value(&self) -> Value {
        Value::Array(self.ops.iter().map(PatchOp::to_value).collect())
    }

    /// Applies every operation in order. If one fails, the operations already
    /// applied are undone, `target` is left as it was, and the error names the
    /// failing operation.
    pub fn apply(&self, target: &mut Value) -> Result<(), PatchError> {
        let mut log = Vec::with_capacity(self.ops.len());
        for (op, patch_op) in self.ops.iter().enumerate() {
            if let Err(reason) = apply_op(target, patch_op, &mut log) {
                while let Some(entry) = log.pop() {
                    undo(target, entry);
                }
                return Err(PatchError::Failed { op, reason });
            }
        }
        Ok(())
    }
}

impl PatchOp {
    fn to_value(&self) -> Value {
        fn field(name: &str, value: Value) -> (Value, Value) {
            (Value::from(name), value)
        }
        fn path_value(path: &[PathStep]) -> Value {
            Value::Array(path.iter().map(PathStep::to_value).collect())
        }
        let entries = match self {
            PatchOp::Set { path, value } => vec![
                field("op", Value::from("set")),
                field("path", path_value(path)),
                field("value", value.clone()),
            ],
            PatchOp::Remove { path } => {
                vec![
                    field("op", Value::from("remove")),
                    field("path", path_value(path)),
                ]
            }
            PatchOp::Splice {
                path,
                index,
                delete,
                insert,
            } => {
                let mut entries = vec![
                    field("op", Value::from("splice")),
                    field("path", path_value(path)),
                    field("index", Value::from(*index)),
                    field("delete", Value::from(*delete)),
                ];
                if !insert.is_nil() {
                    entries.push(field("insert", insert.clone()));
                }
                entries
            }
        };
        Value::Map(entries)
    }
}

/// "a map", "an integer", ...: the kind of a value, for error messages.
fn a_kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "a bin",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an ext",
    }
}

// ---------------------------------------------------------------- parsing

const FIELDS: [&str; 6] = ["op", "path", "value", "index", "delete", "insert"];

fn parse_op(item: Value) -> Result<PatchOp, String> {
    let entries = match item {
        Value::Map(entries) => entries,
        other => {
            return Err(format!(
                "an operation must be a map, not {}",
                a_kind(&other)
            ));
        }
    };
    let mut fields: [Option<Value>; 6] = Default::default();
    for (key, value) in entries {
        let Some(name) = key.as_str() else {
            return Err(format!(
                "operation keys must be UTF-8 strings, not {}",
                a_kind(&key)
            ));
        };
        let slot = FIELDS
            .iter()
            .position(|field| *field == name)
            .and_then(|i| fields.get_mut(i))
            .ok_or_else(|| format!("unknown field {name:?}"))?;
        if slot.is_some() {
            return Err(format!("duplicate field {name:?}"));
        }
        *slot = Some(value);
    }
    let [op, path, value, index, delete, insert] = fields;

    let op = op.ok_or("missing field \"op\"")?;
    let Some(name) = op.as_str() else {
        return Err(format!(
            "field \"op\" must be a string, not {}",
            a_kind(&op)
        ));
    };
    let allowed: &[&str] = match name {
        "set" => &["value"],
        "remove" => &[],
        "splice" => &["index", "delete", "insert"],
        other => {
            return Err(format!(
                "unknown op {other:?} (expected \"set\", \"remove\" or \"splice\")"
            ));
        }
    };
    let present = [
        ("value", value.is_some()),
        ("index", index.is_some()),
        ("delete", delete.is_some()),
        ("insert", insert.is_some()),
    ];
    for (field, present) in present {
        if present && !allowed.contains(&field) {
            return Err(format!(
                "field {field:?} is not allowed in a {name:?} operation"
            ));
        }
    }
    let path = parse_path(path.ok_or("missing field \"path\"")?)?;

    match name {
        "set" => Ok(PatchOp::Set {
            path,
            value: value.ok_or("missing field \"value\"")?,
        }),
        "remove" if path.is_empty() => Err("the path of a remove must not be empty".into()),
        "remove" => Ok(PatchOp::Remove { path }),
        _ => {
            let index = parse_u64("index", index.ok_or("missing field \"index\"")?)?;
            let delete = delete
                .map(|d| parse_u64("delete", d))
                .transpose()?
                .unwrap_or(0);
            let insert = match insert {
                None => Value::Nil,
                Some(Value::String(s)) if !s.is_str() => {
                    return Err("field \"insert\" is a string that is not valid UTF-8".into());
                }
                Some(v @ (Value::Array(_) | Value::Binary(_) | Value::String(_))) => v,
                Some(other) => {
                    return Err(format!(
                        "field \"insert\" must be an array, a bin or a string, not {}",
                        a_kind(&other)
                    ));
                }
            };
            Ok(PatchOp::Splice {
                path,
                index,
                delete,
                insert,
            })
        }
    }
}

fn parse_path(v: Value) -> Result<Vec<PathStep>, String> {
    let steps = match v {
        Value::Array(steps) => steps,
        other => {
            return Err(format!(
                "field \"path\" must be an array, not {}",
                a_kind(&other)
            ));
        }
    };
    if steps.len() > MAX_PATH_STEPS {
        return Err(format!(
            "the path has {} steps, more than the limit of {MAX_PATH_STEPS}",
            steps.len()
        ));
    }
    steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| match step {
            Value::String(s) => s
                .into_str()
                .map(PathStep::Key)
                .ok_or_else(|| format!("path step {i} is a string that is not valid UTF-8")),
            Value::Integer(n) => n
                .as_u64()
                .map(PathStep::Index)
                .ok_or_else(|| format!("path step {i} is a negative integer ({n})")),
            other => Err(format!(
                "path step {i} must be a string or a non-negative integer, not {}",
                a_kind(&other)
            )),
        })
        .collect()
}

fn parse_u64(field: &str, v: Value) -> Result<u64, String> {
    match v {
        Value::Integer(n) => n
            .as_u64()
            .ok_or_else(|| format!("field {field:?} must not be negative ({n})")),
        other => Err(format!(
            "field {field:?} must be a non-negative integer, not {}",
            a_kind(&other)
        )),
    }
}

// ---------------------------------------------------------------- applying

/// How to undo one applied operation. Positions (`at`) are resolved positions
/// from the root (array index or map entry index), valid in the state right
/// after the operation, which is the state in which it is undone.
enum Undo {
    /// Put `old` back at `at` (the root if empty).
    Replaced { at: Vec<usize>, old: Value },
    /// Splice `insert` over `index..index + delete` of the container at `at`.
    Splice {
        at: Vec<usize>,
        index: usize,
        delete: usize,
        insert: Items,
    },
}

/// A run of items of a container: the unit of a splice.
enum Items {
    Values(Vec<Value>),
    Entries(Vec<(Value, Value)>),
    Bytes(Vec<u8>),
    Text(String),
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Values(v) => v.len(),
            Items::Entries(v) => v.len(),
            Items::Bytes(v) => v.len(),
            Items::Text(v) => v.len(),
        }
    }
}

/// Where a step falls in a container.
enum Slot {
    /// An existing entry or element, at this position.
    At(usize),
    /// A new entry or element, to be appended (map key absent, index == len).
    Append,
    /// An array index past the end.
    PastEnd,
}

/// Applies one operation. On error, `root` has not been modified.
fn apply_op(root: &mut Value, op: &PatchOp, log: &mut Vec<Undo>) -> Result<(), String> {
    match op {
        PatchOp::Set { path, value } => apply_set(root, path, value, log),
        PatchOp::Remove { path } => apply_remove(root, path, log),
        PatchOp::Splice {
            path,
            index,
            delete,
            insert,
        } => apply_splice(root, path, *index, *delete, insert, log),
    }
}

/// An array index; indexes beyond `usize` are out of bounds anyway.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn step_error(i: usize, step: &PathStep, reason: &str) -> String {
    format!("path step {i} ({step}): {reason}")
}

fn find_slot(parent: &Value, step: &PathStep) -> Result<Slot, String> {
    match (parent, step) {
        (Value::Map(entries), _) => Ok(entries
            .iter()
            .position(|(k, _)| step.matches_key(k))
            .map_or(Slot::Append, Slot::At)),
        (Value::Array(_), PathStep::Key(_)) => {
            Err("a string key cannot select an array element".into())
        }
        (Value::Array(items), PathStep::Index(index)) => {
            let pos = to_usize(*index);
            Ok(match pos.cmp(&items.len()) {
                std::cmp::Ordering::Less => Slot::At(pos),
                std::cmp::Ordering::Equal => Slot::Append,
                std::cmp::Ordering::Greater => Slot::PastEnd,
            })
        }
        (other, _) => Err(format!("cannot select inside {}", a_kind(other))),
    }
}

/// Why a step found no existing entry or element in `parent`.
fn absent(parent: &Value) -> String {
    match parent {
        Value::Array(items) => {
            format!("index out of bounds for an array of length {}", items.len())
        }
        _ => "no such key in the map".into(),
    }
}

fn child_at(v: &mut Value, pos: usize) -> Option<&mut Value> {
    match v {
        Value::Map(entries) => entries.get_mut(pos).map(|entry| &mut entry.1),
        Value::Array(items) => items.get_mut(pos),
        _ => None,
    }
}

/// Follows `steps` from `root`, pushing the resolved position of each onto `at`.
fn descend<'a>(
    root: &'a mut Value,
    steps: &[PathStep],
    at: &mut Vec<usize>,
) -> Result<&'a mut Value, String> {
    let mut cur = root;
    for (i, step) in steps.iter().enumerate() {
        let pos = match find_slot(cur, step) {
            Ok(Slot::At(pos)) => pos,
            Ok(_) => return Err(step_error(i, step, &absent(cur))),
            Err(e) => return Err(step_error(i, step, &e)),
        };
        at.push(pos);
        cur = child_at(cur, pos).ok_or_else(|| step_error(i, step, "no such entry"))?;
    }
    Ok(cur)
}

/// The value at the resolved positions `at` from `root`.
fn resolve<'a>(root: &'a mut Value, at: &[usize]) -> Option<&'a mut Value> {
    let mut cur = root;
    for &pos in at {
        cur = child_at(cur, pos)?;
    }
    Some(cur)
}

/// Replaces `start..end` of the array, map, bin or string `target` with
/// `insert` and returns what was removed; `None` (and `target` unchanged) if
/// the kinds differ, the range is out of bounds or, for a string, not on
/// character boundaries.
fn splice_items(target: &mut Value, start: usize, end: usize, insert: Items) -> Option<Items> {
    fn splice_vec<T>(v: &mut Vec<T>, start: usize, end: usize, new: Vec<T>) -> Option<Vec<T>> {
        (start <= end && end <= v.len()).then(|| v.splice(start..end, new).collect())
    }
    match (target, insert) {
        (Value::Array(v), Items::Values(new)) => splice_vec(v, start, end, new).map(Items::Values),
        (Value::Map(v), Items::Entries(new)) => splice_vec(v, start, end, new).map(Items::Entries),
        (Value::Binary(v), Items::Bytes(new)) => splice_vec(v, start, end, new).map(Items::Bytes),
        (Value::String(s), Items::Text(new)) => edit_str(s, |text| {
            let removed = text.get(start..end)?.to_owned();
            text.replace_range(start..end, &new);
            Some(Items::Text(removed))
        })
        .flatten(),
        _ => None,
    }
}

/// Runs `f` on the text of `s` in place; `None` if `s` is not valid UTF-8.
fn edit_str<R>(s: &mut Utf8String, f: impl FnOnce(&mut String) -> R) -> Option<R> {
    if !s.is_str() {
        return None;
    }
    // Valid UTF-8 (checked above), so `into_str` gives the text back.
    let mut text = mem::replace(s, Utf8String::from(String::new())).into_str()?;
    let result = f(&mut text);
    *s = Utf8String::from(text);
    Some(result)
}

/// [`splice_items`], recording the inverse splice in `log`.
fn splice_logged(
    target: &mut Value,
    at: Vec<usize>,
    start: usize,
    end: usize,
    insert: Items,
    log: &mut Vec<Undo>,
) -> Option<()> {
    let delete = insert.len();
    let removed = splice_items(target, start, end, insert)?;
    log.push(Undo::Splice {
        at,
        index: start,
        delete,
        insert: removed,
    });
    Some(())
}

fn apply_set(
    root: &mut Value,
    path: &[PathStep],
    value: &Value,
    log: &mut Vec<Undo>,
) -> Result<(), String> {
    let Some((last, parent_steps)) = path.split_last() else {
        let old = mem::replace(root, value.clone());
        log.push(Undo::Replaced {
            at: Vec::new(),
            old,
        });
        return Ok(());
    };
    let mut at = Vec::with_capacity(path.len());
    let parent = descend(root, parent_steps, &mut at)?;
    let err = |reason: &str| step_error(parent_steps.len(), last, reason);
    match find_slot(parent, last).map_err(|e| err(&e))? {
        Slot::At(pos) => {
            let slot = child_at(parent, pos).ok_or_else(|| err("no such entry"))?;
            let old = mem::replace(slot, value.clone());
            at.push(pos);
            log.push(Undo::Replaced { at, old });
            Ok(())
        }
        Slot::Append => {
            let (len, new) = match parent {
                Value::Map(entries) => (
                    entries.len(),
                    Items::Entries(vec![(last.to_value(), value.clone())]),
                ),
                Value::Array(items) => (items.len(), Items::Values(vec![value.clone()])),
                other => return Err(err(&format!("cannot select inside {}", a_kind(other)))),
            };
            splice_logged(parent, at, len, len, new, log).ok_or_else(|| err("no such entry"))
        }
        Slot::PastEnd => Err(err(&format!(
            "{} (set may only append at the end)",
            absent(parent)
        ))),
    }
}

fn apply_remove(root: &mut Value, path: &[PathStep], log: &mut Vec<Undo>) -> Result<(), String> {
    let Some((last, parent_steps)) = path.split_last() else {
        return Err("the path of a remove must not be empty".into());
    };
    let mut at = Vec::with_capacity(parent_steps.len());
    let parent = descend(root, parent_steps, &mut at)?;
    let err = |reason: &str| step_error(parent_steps.len(), last, reason);
    let Slot::At(pos) = find_slot(parent, last).map_err(|e| err(&e))? else {
        return Err(err(&absent(parent)));
    };
    let nothing = match parent {
        Value::Map(_) => Items::Entries(Vec::new()),
        _ => Items::Values(Vec::new()),
    };
    splice_logged(parent, at, pos, pos.saturating_add(1), nothing, log)
        .ok_or_else(|| err("no such entry"))
}

fn apply_splice(
    root: &mut Value,
    path: &[PathStep],
    index: u64,
    delete: u64,
    insert: &Value,
    log: &mut Vec<Undo>,
) -> Result<(), String> {
    let mut at = Vec::with_capacity(path.len());
    let target = descend(root, path, &mut at)?;
    let len = match &*target {
        Value::Array(items) => items.len(),
        Value::Binary(bytes) => bytes.len(),
        Value::String(s) => s
            .as_str()
            .ok_or("the target string is not valid UTF-8")?
            .len(),
        other => {
            return Err(format!(
                "the splice target must be an array, a bin or a string, not {}",
                a_kind(other)
            ));
        }
    };
    let start = to_usize(index);
    let end = start.saturating_add(to_usize(delete));
    if start > len {
        return Err(format!(
            "splice index {index} is past the end (length {len})"
        ));
    }
    if end > len {
        return Err(format!(
            "splice deleting {delete} from index {index} runs past the end (length {len})"
        ));
    }
    let insert = match (&*target, insert) {
        (Value::Array(_), Value::Array(new)) => Items::Values(new.clone()),
        (Value::Array(_), Value::Nil) => Items::Values(Vec::new()),
        (Value::Binary(_), Value::Binary(new)) => Items::Bytes(new.clone()),
        (Value::Binary(_), Value::Nil) => Items::Bytes(Vec::new()),
        (Value::String(_), Value::String(new)) => Items::Text(
            new.as_str()
                .ok_or("the inserted string is not valid UTF-8")?
                .to_owned(),
        ),
        (Value::String(_), Value::Nil) => Items::Text(String::new()),
        (target, insert) => {
            return Err(format!(
                "cannot splice {} into {}",
                a_kind(insert),
                a_kind(target)
            ));
        }
    };
    // Bounds and kinds are checked, so only string boundaries can fail here.
    splice_logged(target, at, start, end, insert, log).ok_or_else(|| {
        format!("splice byte offsets {start} and {end} must fall on UTF-8 character boundaries")
    })
}

fn undo(root: &mut Value, entry: Undo) {
    let done = match entry {
        Undo::Replaced { at, old } => resolve(root, &at).map(|slot| *slot = old).is_some(),
        Undo::Splice {
            at,
            index,
            delete,
            insert,
        } => resolve(root, &at)
            .and_then(|target| splice_items(target, index, index.saturating_add(delete), insert))
            .is_some(),
    };
    // The log is replayed in reverse on exactly the states it was recorded
    // in, so this cannot fail.
    debug_assert!(done, "patch undo log does not match the value");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text)
    }
    fn i(n: i64) -> Value {
        Value::from(n)
    }
    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
    }
    fn key(k: &str) -> PathStep {
        PathStep::Key(k.into())
    }
    fn idx(n: u64) -> PathStep {
        PathStep::Index(n)
    }
    fn set(path: Vec<PathStep>, value: Value) -> PatchOp {
        PatchOp::Set { path, value }
    }
    fn remove(path: Vec<PathStep>) -> PatchOp {
        PatchOp::Remove { path }
    }
    fn splice(path: Vec<PathStep>, index: u64, delete: u64, insert: Value) -> PatchOp {
        PatchOp::Splice {
            path,
            index,
            delete,
            insert,
        }
    }
    /// Applies `ops` to `value`, asserting an unchanged value on error.
    fn run(value: &Value, ops: Vec<PatchOp>) -> Result<Value, PatchError> {
        let mut target = value.clone();
        let result = Patch { ops }.apply(&mut target);
        match result {
            Ok(()) => Ok(target),
            Err(e) => {
                assert_eq!(&target, value, "a failed patch must not change the value");
                Err(e)
            }
        }
    }
    /// The reason of a failed apply of a single op.
    fn fail(value: &Value, op: PatchOp) -> String {
        match run(value, vec![op]) {
            Err(PatchError::Failed { op: 0, reason }) => reason,
            other => panic!("expected op 0 to fail, got {other:?}"),
        }
    }
    fn sample() -> Value {
        map(vec![
            ("a", i(1)),
            ("b", arr(vec![i(10), i(20), i(30)])),
            ("c", map(vec![("x", s("héllo"))])),
        ])
    }

    #[test]
    fn set_empty_path_replaces_root() {
        assert_eq!(run(&sample(), vec![set(vec![], i(7))]), Ok(i(7)));
    }

    #[test]
    fn set_existing_key_replaces_in_place() {
        let out = run(&sample(), vec![set(vec![key("a")], s("new"))]).unwrap();
        let Value::Map(entries) = out else { panic!() };
        assert_eq!(entries[0], (s("a"), s("new")));
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn set_new_key_appends_at_end() {
        let out = run(&sample(), vec![set(vec![key("c"), key("y")], Value::Nil)]).unwrap();
        assert_eq!(
            out,
            map(vec![
                ("a", i(1)),
                ("b", arr(vec![i(10), i(20), i(30)])),
                ("c", map(vec![("x", s("héllo")), ("y", Value::Nil)])),
            ])
        );
    }

    #[test]
    fn set_with_duplicate_keys_uses_first_entry() {
        let v = map(vec![("k", i(1)), ("k", i(2))]);
        assert_eq!(
            run(&v, vec![set(vec![key("k")], i(3))]),
            Ok(map(vec![("k", i(3)), ("k", i(2))]))
        );
    }

    #[test]
    fn integer_steps_select_integer_map_keys() {
        let v = Value::Map(vec![(i(5), s("five")), (s("5"), s("string five"))]);
        let out = run(
            &v,
            vec![set(vec![idx(5)], s("FIVE")), set(vec![idx(6)], s("six"))],
        );
        assert_eq!(
            out,
            Ok(Value::Map(vec![
                (i(5), s("FIVE")),
                (s("5"), s("string five")),
                (Value::from(6u64), s("six")),
            ]))
        );
        let out = run(&v, vec![remove(vec![idx(5)])]);
        assert_eq!(out, Ok(Value::Map(vec![(s("5"), s("string five"))])));
        // A string step does not match an integer key.
        let out = run(&v, vec![remove(vec![key("5")])]);
        assert_eq!(out, Ok(Value::Map(vec![(i(5), s("five"))])));
    }

    #[test]
    fn set_array_replace_append_and_past_end() {
        let v = arr(vec![i(1), i(2)]);
        assert_eq!(
            run(&v, vec![set(vec![idx(1)], i(9))]),
            Ok(arr(vec![i(1), i(9)]))
        );
        assert_eq!(
            run(&v, vec![set(vec![idx(2)], i(3))]),
            Ok(arr(vec![i(1), i(2), i(3)]))
        );
        assert!(fail(&v, set(vec![idx(3)], i(4))).contains("set may only append"));
        assert!(fail(&v, set(vec![idx(u64::MAX)], i(4))).contains("set may only append"));
    }

    #[test]
    fn set_errors() {
        let v = sample();
        assert!(fail(&v, set(vec![key("zz"), key("y")], i(1))).contains("no such key"));
        assert!(
            fail(&v, set(vec![key("a"), key("y")], i(1)))
                .contains("cannot select inside an integer")
        );
        assert!(fail(&v, set(vec![key("b"), key("y")], i(1))).contains("string key"));
        assert!(fail(&v, set(vec![key("b"), idx(7), idx(0)], i(1))).contains("out of bounds"));
        assert!(
            fail(&v, set(vec![key("a"), idx(0), idx(0)], i(1))).contains("cannot select inside")
        );
        let reason = fail(&v, set(vec![key("c"), key("x"), key("y")], i(1)));
        assert_eq!(reason, "path step 2 (\"y\"): cannot select inside a string");
    }

    #[test]
    fn remove_map_entry_keeps_order() {
        let out = run(&sample(), vec![remove(vec![key("b")])]);
        assert_eq!(
            out,
            Ok(map(vec![("a", i(1)), ("c", map(vec![("x", s("héllo"))]))]))
        );
    }

    #[test]
    fn remove_array_element_shifts_down() {
        let out = run(&sample(), vec![remove(vec![key("b"), idx(0)])]).unwrap();
        let Value::Map(entries) = out else { panic!() };
        assert_eq!(entries[1].1, arr(vec![i(20), i(30)]));
    }

    #[test]
    fn remove_errors() {
        let v = sample();
        assert!(fail(&v, remove(vec![])).contains("must not be empty"));
        assert!(fail(&v, remove(vec![key("zz")])).contains("no such key"));
        assert!(fail(&v, remove(vec![key("b"), idx(3)])).contains("out of bounds"));
        assert!(fail(&v, remove(vec![key("b"), key("x")])).contains("string key"));
        assert!(
            fail(&v, remove(vec![key("a"), idx(0)])).contains("cannot select inside an integer")
        );
        assert!(fail(&v, remove(vec![key("q"), idx(0)])).contains("path step 0"));
    }

    #[test]
    fn splice_array() {
        let v = arr(vec![i(0), i(1), i(2), i(3)]);
        let out = run(
            &v,
            vec![splice(vec![], 1, 2, arr(vec![s("a"), s("b"), s("c")]))],
        );
        assert_eq!(out, Ok(arr(vec![i(0), s("a"), s("b"), s("c"), i(3)])));
        let out = run(&v, vec![splice(vec![], 4, 0, arr(vec![i(4)]))]);
        assert_eq!(out, Ok(arr(vec![i(0), i(1), i(2), i(3), i(4)])));
        let out = run(&v, vec![splice(vec![], 0, 4, Value::Nil)]);
        assert_eq!(out, Ok(arr(vec![])));
        let nested = map(vec![("l", v.clone())]);
        let out = run(&nested, vec![splice(vec![key("l")], 3, 1, Value::Nil)]);
        assert_eq!(out, Ok(map(vec![("l", arr(vec![i(0), i(1), i(2)]))])));
    }

    #[test]
    fn splice_bin() {
        let v = Value::Binary(vec![1, 2, 3, 4]);
        let out = run(&v, vec![splice(vec![], 1, 1, Value::Binary(vec![9, 9]))]);
        assert_eq!(out, Ok(Value::Binary(vec![1, 9, 9, 3, 4])));
        let out = run(&v, vec![splice(vec![], 2, 2, Value::Nil)]);
        assert_eq!(out, Ok(Value::Binary(vec![1, 2])));
        assert!(
            fail(&v, splice(vec![], 0, 0, arr(vec![])))
                .contains("cannot splice an array into a bin")
        );
        assert!(
            fail(&v, splice(vec![], 0, 0, s(""))).contains("cannot splice a string into a bin")
        );
    }

    #[test]
    fn splice_string_uses_byte_offsets_on_char_boundaries() {
        let v = s("héllo"); // 'é' is bytes 1..3
        assert_eq!(run(&v, vec![splice(vec![], 1, 2, s("e"))]), Ok(s("hello")));
        assert_eq!(run(&v, vec![splice(vec![], 6, 0, s("!"))]), Ok(s("héllo!")));
        assert_eq!(
            run(&v, vec![splice(vec![], 0, 3, Value::Nil)]),
            Ok(s("llo"))
        );
        assert!(fail(&v, splice(vec![], 2, 0, s("x"))).contains("character boundaries"));
        assert!(fail(&v, splice(vec![], 1, 1, s("x"))).contains("character boundaries"));
        assert!(
            fail(&v, splice(vec![], 0, 0, Value::Binary(vec![])))
                .contains("cannot splice a bin into a string")
        );
    }

    #[test]
    fn splice_errors() {
        let v = map(vec![("l", arr(vec![i(1), i(2)])), ("n", i(1))]);
        assert!(fail(&v, splice(vec![key("l")], 3, 0, Value::Nil)).contains("past the end"));
        assert!(fail(&v, splice(vec![key("l")], 1, 2, Value::Nil)).contains("runs past the end"));
        assert!(
            fail(&v, splice(vec![key("l")], 1, u64::MAX, Value::Nil)).contains("runs past the end")
        );
        assert!(fail(&v, splice(vec![key("l")], u64::MAX, 0, Value::Nil)).contains("past the end"));
        assert!(fail(&v, splice(vec![key("n")], 0, 0, Value::Nil)).contains("not an integer"));
        assert!(fail(&v, splice(vec![], 0, 0, Value::Nil)).contains("not a map"));
        assert!(
            fail(&v, splice(vec![key("l")], 0, 0, i(3)))
                .contains("cannot splice an integer into an array")
        );
        assert!(fail(&v, splice(vec![key("x")], 0, 0, Value::Nil)).contains("no such key"));
    }

    #[test]
    fn failed_patch_is_rolled_back() {
        let v = sample();
        let ops = vec![
            set(vec![key("c"), key("new")], i(1)),
            splice(vec![key("c"), key("x")], 0, 1, s("J")),
            remove(vec![key("b"), idx(9)]),
        ];
        assert_eq!(
            run(&v, ops),
            Err(PatchError::Failed {
                op: 2,
                reason: "path step 1 (9): index out of bounds for an array of length 3".into()
            })
        );
        // Every kind of undo entry, then a failure.
        let ops = vec![
            remove(vec![key("b"), idx(1)]),
            set(vec![key("a")], arr(vec![])),
            set(vec![key("a"), idx(0)], i(5)),
            set(vec![key("a"), idx(0)], i(6)),
            splice(vec![key("b")], 0, 1, arr(vec![i(1), i(2)])),
            splice(vec![key("c"), key("x")], 1, 2, s("EE")),
            set(vec![key("d")], Value::Binary(vec![1, 2])),
            splice(vec![key("d")], 1, 0, Value::Binary(vec![7])),
            remove(vec![key("c")]),
            set(vec![], i(0)),
            set(vec![key("oops")], i(0)),
        ];
        assert!(matches!(
            run(&v, ops),
            Err(PatchError::Failed { op: 10, .. })
        ));
    }

    #[test]
    fn wire_round_trip() {
        let patch = Patch {
            ops: vec![
                set(vec![], map(vec![("k", Value::Binary(vec![1]))])),
                set(vec![key("a"), idx(3)], Value::Nil),
                remove(vec![idx(u64::MAX)]),
                splice(vec![key("s")], 1, 2, s("x")),
                splice(vec![], 0, 0, Value::Nil),
            ],
        };
        let wire = patch.to_value();
        let Value::Array(ops) = &wire else { panic!() };
        assert_eq!(
            ops[4],
            map(vec![
                ("op", s("splice")),
                ("path", arr(vec![])),
                ("index", i(0)),
                ("delete", i(0))
            ])
        );
        assert_eq!(Patch::from_value(wire), Ok(patch));
    }

    #[test]
    fn splice_defaults() {
        let wire = arr(vec![map(vec![
            ("op", s("splice")),
            ("path", arr(vec![])),
            ("index", i(1)),
        ])]);
        let patch = Patch::from_value(wire).unwrap();
        assert_eq!(patch.ops, vec![splice(vec![], 1, 0, Value::Nil)]);
        let mut v = s("abc");
        patch.apply(&mut v).unwrap();
        assert_eq!(v, s("abc"));
    }

    /// The reason `from_value` gives for a single malformed op.
    fn malformed(op: Value) -> String {
        match Patch::from_value(arr(vec![op])) {
            Err(PatchError::Malformed { op: 0, reason }) => reason,
            other => panic!("expected op 0 to be malformed, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors() {
        let op = |fields: Vec<(&str, Value)>| malformed(map(fields));
        let p = || ("path", arr(vec![]));
        assert_eq!(
            Patch::from_value(i(1)),
            Err(PatchError::NotAnArray {
                found: "an integer"
            })
        );
        assert_eq!(
            malformed(i(1)),
            "an operation must be a map, not an integer"
        );
        assert!(malformed(Value::Map(vec![(i(1), i(1))])).contains("keys must be UTF-8 strings"));
        assert_eq!(op(vec![p()]), "missing field \"op\"");
        assert!(op(vec![("op", i(1)), p()]).contains("\"op\" must be a string"));
        assert!(op(vec![("op", s("move")), p()]).contains("unknown op \"move\""));
        assert_eq!(op(vec![("op", s("remove"))]), "missing field \"path\"");
        assert_eq!(op(vec![("op", s("set")), p()]), "missing field \"value\"");
        assert_eq!(
            op(vec![("op", s("splice")), p()]),
            "missing field \"index\""
        );
        assert_eq!(
            op(vec![
                ("op", s("set")),
                p(),
                ("value", i(1)),
                ("extra", i(1))
            ]),
            "unknown field \"extra\""
        );
        assert_eq!(
            op(vec![("op", s("set")), p(), p(), ("value", i(1))]),
            "duplicate field \"path\""
        );
        let r = op(vec![
            ("op", s("remove")),
            ("path", arr(vec![s("a")])),
            ("value", i(1)),
        ]);
        assert_eq!(
            r,
            "field \"value\" is not allowed in a \"remove\" operation"
        );
        let r = op(vec![
            ("op", s("set")),
            p(),
            ("value", i(1)),
            ("index", i(0)),
        ]);
        assert_eq!(r, "field \"index\" is not allowed in a \"set\" operation");
        assert_eq!(
            op(vec![("op", s("remove")), p()]),
            "the path of a remove must not be empty"
        );
        assert!(op(vec![("op", s("remove")), ("path", s("a"))]).contains("must be an array"));
        assert!(op(vec![("op", s("remove")), ("path", arr(vec![i(-1)]))]).contains("negative"));
        assert!(
            op(vec![
                ("op", s("remove")),
                ("path", arr(vec![Value::F64(1.0)]))
            ])
            .contains("not a float")
        );
        assert!(op(vec![("op", s("remove")), ("path", arr(vec![Value::Nil]))]).contains("not nil"));
        let long = arr(vec![i(0); MAX_PATH_STEPS + 1]);
        assert!(op(vec![("op", s("remove")), ("path", long)]).contains("limit of 64"));
        let splice_with =
            |field: &str, v: Value| op(vec![("op", s("splice")), p(), ("index", i(0)), (field, v)]);
        assert!(
            op(vec![("op", s("splice")), p(), ("index", i(-1))]).contains("must not be negative")
        );
        assert!(
            op(vec![("op", s("splice")), p(), ("index", Value::F32(0.0))])
                .contains("non-negative integer")
        );
        assert!(splice_with("delete", i(-2)).contains("\"delete\" must not be negative"));
        assert!(splice_with("delete", s("1")).contains("not a string"));
        assert!(splice_with("insert", i(1)).contains("must be an array, a bin or a string"));
        assert!(splice_with("insert", Value::Nil).contains("not nil"));
    }

    #[test]
    fn parse_limits_and_op_numbers() {
        let ok = map(vec![
            ("op", s("set")),
            ("path", arr(vec![])),
            ("value", i(1)),
        ]);
        let path_ok = arr(vec![i(0); MAX_PATH_STEPS]);
        let long_ok = map(vec![("op", s("remove")), ("path", path_ok)]);
        assert!(Patch::from_value(arr(vec![ok.clone(), long_ok])).is_ok());
        let bad = map(vec![("op", s("set")), ("path", arr(vec![]))]);
        let err = Patch::from_value(arr(vec![ok.clone(), bad])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "patch operation 1 is malformed: missing field \"value\""
        );
        let too_many = arr(vec![Value::Nil; MAX_PATCH_OPS + 1]);
        assert_eq!(
            Patch::from_value(too_many),
            Err(PatchError::TooManyOps {
                count: MAX_PATCH_OPS + 1
            })
        );
        assert!(Patch::from_value(arr(vec![ok; MAX_PATCH_OPS])).is_ok());
    }

    #[test]
    fn invalid_utf8_strings() {
        // Decode a str8 holding the invalid UTF-8 byte 0xff.
        let raw = [0xd9u8, 0x01, 0xff];
        let bad = rmpv::decode::read_value(&mut &raw[..]).unwrap();
        assert!(matches!(&bad, Value::String(s) if !s.is_str()));
        let r = malformed(map(vec![
            ("op", s("remove")),
            ("path", arr(vec![bad.clone()])),
        ]));
        assert!(r.contains("not valid UTF-8"));
        let r = malformed(map(vec![
            ("op", s("splice")),
            ("path", arr(vec![])),
            ("index", i(0)),
            ("insert", bad.clone()),
        ]));
        assert!(r.contains("not valid UTF-8"));
        assert!(malformed(Value::Map(vec![(bad.clone(), i(1))])).contains("UTF-8"));
        assert!(fail(&bad, splice(vec![], 0, 0, s("x"))).contains("not valid UTF-8"));
        assert!(fail(&s("ok"), splice(vec![], 0, 0, bad.clone())).contains("not valid UTF-8"));
        // Invalid strings are fine as plain data.
        assert_eq!(run(&i(0), vec![set(vec![], bad.clone())]), Ok(bad));
    }

    #[test]
    fn error_display() {
        let err = PatchError::Failed {
            op: 3,
            reason: "path step 0 (\"a\"): no such key in the map".into(),
        };
        assert_eq!(
            err.to_string(),
            "patch operation 3 failed, so the patch was not applied: path step 0 (\"a\"): no such key in the map"
        );
        let err = PatchError::TooManyOps { count: 70_000 };
        assert_eq!(
            err.to_string(),
            "a patch may hold at most 65536 operations, but this one holds 70000"
        );
    }
}
