//! Property tests for datablock patches (`protocol::patch`).
//!
//! The main property compares `Patch::apply` with a model: random edits are
//! performed directly on a plain copy of the value (ordinary `Vec`
//! manipulation), each recorded as the patch operation that should do the
//! same thing.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use replication_serve::protocol::patch::{MAX_PATH_STEPS, Patch, PatchError, PatchOp, PathStep};
use rmpv::Value;

/// Short text with multi-byte characters, to exercise char boundaries.
fn text() -> impl Strategy<Value = String> {
    "[a-cé€😀]{0,6}"
}

/// Map keys; never contain `#`, so `"#missing"` is never a key.
fn key() -> impl Strategy<Value = String> {
    "[a-dé]{0,3}"
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::F64),
        any::<f32>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::F32),
        text().prop_map(Value::from),
        vec(any::<u8>(), 0..8).prop_map(Value::Binary),
    ]
}

/// An arbitrary nested value: maps with unique string keys, arrays, leaves.
fn value_up_to(depth: u32) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| {
                Value::Map(m.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

fn value() -> impl Strategy<Value = Value> {
    value_up_to(4)
}

/// The random choices behind one edit; `edit` turns them into a valid edit
/// of the current model.
#[derive(Debug, Clone)]
struct Seed {
    walk: Vec<usize>,
    kind: u8,
    a: usize,
    b: usize,
    value: Value,
    key: String,
    items: Vec<Value>,
    bytes: Vec<u8>,
    text: String,
}

fn seed() -> impl Strategy<Value = Seed> {
    (
        vec(any::<usize>(), 0..4),
        any::<u8>(),
        any::<usize>(),
        any::<usize>(),
        value_up_to(2),
        key(),
        vec(value_up_to(1), 0..3),
        vec(any::<u8>(), 0..4),
        text(),
    )
        .prop_map(|(walk, kind, a, b, value, key, items, bytes, text)| Seed {
            walk,
            kind,
            a,
            b,
            value,
            key,
            items,
            bytes,
            text,
        })
}

fn node_at<'a>(mut v: &'a mut Value, positions: &[usize]) -> &'a mut Value {
    for &pos in positions {
        v = match v {
            Value::Map(entries) => &mut entries[pos].1,
            Value::Array(items) => &mut items[pos],
            _ => unreachable!(),
        };
    }
    v
}

fn with(path: &[PathStep], step: PathStep) -> Vec<PathStep> {
    let mut path = path.to_vec();
    path.push(step);
    path
}

/// Performs one edit chosen by `seed` directly on `model` and returns the
/// patch operation that should have the same effect.
fn edit(model: &mut Value, seed: &Seed) -> PatchOp {
    // Pick a node by walking down from the root.
    let (mut path, mut positions) = (Vec::new(), Vec::new());
    let mut node = &*model;
    for &choice in &seed.walk {
        match node {
            Value::Map(entries) if !entries.is_empty() => {
                let pos = choice % entries.len();
                path.push(PathStep::Key(entries[pos].0.as_str().unwrap().to_owned()));
                positions.push(pos);
                node = &entries[pos].1;
            }
            Value::Array(items) if !items.is_empty() => {
                let pos = choice % items.len();
                path.push(PathStep::Index(pos as u64));
                positions.push(pos);
                node = &items[pos];
            }
            _ => break,
        }
    }
    let node = node_at(model, &positions);
    let value = seed.value.clone();
    match (seed.kind % 4, node) {
        // Set a key of a map (replacing in place or appending).
        (1, Value::Map(entries)) => {
            let key = seed.key.clone();
            match entries.iter().position(|(k, _)| k.as_str() == Some(&key)) {
                Some(pos) => entries[pos].1 = value.clone(),
                None => entries.push((Value::from(key.as_str()), value.clone())),
            }
            PatchOp::Set {
                path: with(&path, PathStep::Key(key)),
                value,
            }
        }
        // Set an element of an array, or append one.
        (1, Value::Array(items)) => {
            let i = seed.a % (items.len() + 1);
            if i == items.len() {
                items.push(value.clone());
            } else {
                items[i] = value.clone();
            }
            PatchOp::Set {
                path: with(&path, PathStep::Index(i as u64)),
                value,
            }
        }
        // Remove an entry of a map.
        (2, Value::Map(entries)) if !entries.is_empty() => {
            let (k, _) = entries.remove(seed.a % entries.len());
            PatchOp::Remove {
                path: with(&path, PathStep::Key(k.as_str().unwrap().to_owned())),
            }
        }
        // Remove an element of an array.
        (2, Value::Array(items)) if !items.is_empty() => {
            let i = seed.a % items.len();
            items.remove(i);
            PatchOp::Remove {
                path: with(&path, PathStep::Index(i as u64)),
            }
        }
        // Splice an array.
        (3, Value::Array(items)) => {
            let start = seed.a % (items.len() + 1);
            let delete = seed.b % (items.len() - start + 1);
            items.splice(start..start + delete, seed.items.iter().cloned());
            let insert = if seed.items.is_empty() && seed.b.is_multiple_of(2) {
                Value::Nil
            } else {
                Value::Array(seed.items.clone())
            };
            PatchOp::Splice {
                path,
                index: start as u64,
                delete: delete as u64,
                insert,
            }
        }
        // Splice a bin.
        (3, Value::Binary(bytes)) => {
            let start = seed.a % (bytes.len() + 1);
            let delete = seed.b % (bytes.len() - start + 1);
            let mut new = bytes[..start].to_vec();
            new.extend_from_slice(&seed.bytes);
            new.extend_from_slice(&bytes[start + delete..]);
            *bytes = new;
            let insert = if seed.bytes.is_empty() && seed.b.is_multiple_of(2) {
                Value::Nil
            } else {
                Value::Binary(seed.bytes.clone())
            };
            PatchOp::Splice {
                path,
                index: start as u64,
                delete: delete as u64,
                insert,
            }
        }
        // Splice a string, on character boundaries.
        (3, Value::String(s)) => {
            let old = s.as_str().unwrap().to_owned();
            let bounds: Vec<usize> = old
                .char_indices()
                .map(|(i, _)| i)
                .chain([old.len()])
                .collect();
            let start = bounds[seed.a % bounds.len()];
            let ends: Vec<usize> = bounds.iter().copied().filter(|&e| e >= start).collect();
            let end = ends[seed.b % ends.len()];
            *s = format!("{}{}{}", &old[..start], seed.text, &old[end..]).into();
            let insert = if seed.text.is_empty() && seed.b.is_multiple_of(2) {
                Value::Nil
            } else {
                Value::from(seed.text.as_str())
            };
            PatchOp::Splice {
                path,
                index: start as u64,
                delete: (end - start) as u64,
                insert,
            }
        }
        // Anything else: replace the node itself.
        (_, node) => {
            *node = value.clone();
            PatchOp::Set { path, value }
        }
    }
}

/// A value, the valid edits of it and their result on the model.
fn edited() -> impl Strategy<Value = (Value, Patch, Value)> {
    (value(), vec(seed(), 0..12)).prop_map(|(original, seeds)| {
        let mut model = original.clone();
        let ops = seeds.iter().map(|seed| edit(&mut model, seed)).collect();
        (original, Patch { ops }, model)
    })
}

fn step() -> impl Strategy<Value = PathStep> {
    prop_oneof![
        key().prop_map(PathStep::Key),
        any::<u64>().prop_map(PathStep::Index),
    ]
}

/// Any well-formed op (that `from_value` accepts), not necessarily applicable.
fn op() -> impl Strategy<Value = PatchOp> {
    let path = |min| vec(step(), min..8);
    prop_oneof![
        (path(0), value()).prop_map(|(path, value)| PatchOp::Set { path, value }),
        path(1).prop_map(|path| PatchOp::Remove { path }),
        (
            path(0),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![
                Just(Value::Nil),
                vec(value_up_to(2), 0..3).prop_map(Value::Array),
                vec(any::<u8>(), 0..4).prop_map(Value::Binary),
                text().prop_map(Value::from),
            ]
        )
            .prop_map(|(path, index, delete, insert)| PatchOp::Splice {
                path,
                index,
                delete,
                insert,
            }),
    ]
}

/// An op that fails whatever the value (no key contains `#`).
fn failing_op() -> impl Strategy<Value = PatchOp> {
    let missing = || PathStep::Key("#missing".into());
    prop_oneof![
        Just(PatchOp::Remove {
            path: vec![missing()]
        }),
        Just(PatchOp::Set {
            path: vec![missing(), missing()],
            value: Value::Nil
        }),
        Just(PatchOp::Splice {
            path: vec![],
            index: u64::MAX,
            delete: 0,
            insert: Value::Nil
        }),
        Just(PatchOp::Splice {
            path: vec![missing()],
            index: 0,
            delete: 0,
            insert: Value::Nil
        }),
    ]
}

proptest! {
    #[test]
    fn apply_matches_model((original, patch, model) in edited()) {
        let mut target = original.clone();
        prop_assert_eq!(patch.apply(&mut target), Ok(()));
        prop_assert_eq!(&target, &model);
        // The wire form of the patch carries the same edits.
        let reparsed = Patch::from_value(patch.to_value()).unwrap();
        let mut again = original;
        prop_assert_eq!(reparsed.apply(&mut again), Ok(()));
        prop_assert_eq!(again, model);
    }

    #[test]
    fn wire_round_trip(ops in vec(op(), 0..8)) {
        let patch = Patch { ops };
        prop_assert_eq!(Patch::from_value(patch.to_value()), Ok(patch.clone()));
        // Also through MessagePack bytes.
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &patch.to_value()).unwrap();
        let decoded = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(Patch::from_value(decoded), Ok(patch));
    }

    #[test]
    fn failing_op_leaves_value_unchanged(
        (original, mut patch, _) in edited(),
        failing in failing_op(),
        at in any::<usize>(),
    ) {
        let at = at % (patch.ops.len() + 1);
        patch.ops.insert(at, failing);
        let mut target = original.clone();
        let result = patch.apply(&mut target);
        let failed_at = matches!(result, Err(PatchError::Failed { op, .. }) if op == at);
        prop_assert!(failed_at, "expected op {} to fail, got {:?}", at, result);
        prop_assert_eq!(target, original);
    }

    #[test]
    fn random_ops_apply_fully_or_not_at_all(original in value(), ops in vec(op(), 1..6)) {
        let patch = Patch { ops };
        let mut target = original.clone();
        if let Err(e) = patch.apply(&mut target) {
            let failed = matches!(e, PatchError::Failed { .. });
            prop_assert!(failed, "unexpected error {:?}", e);
            prop_assert_eq!(target, original);
        }
    }

    #[test]
    fn from_value_rejects_garbage_without_panicking(v in value()) {
        // Any outcome is fine as long as it does not panic; accepted patches
        // respect the limits.
        if let Ok(patch) = Patch::from_value(v) {
            for op in &patch.ops {
                let (PatchOp::Set { path, .. } | PatchOp::Remove { path } | PatchOp::Splice { path, .. }) = op;
                prop_assert!(path.len() <= MAX_PATH_STEPS);
            }
        }
    }
}
