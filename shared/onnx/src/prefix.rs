//! Splitting a pipeline's preprocessing off the model: when what computes the model's input
//! is not affine per feature (an `Imputer`, a `OneHotEncoder` behind a `ColumnTransformer`, an
//! L2 `Normalizer`, a `Binarizer`), those operators become a [`ClientPrefix`] the data owner
//! runs in plaintext before quantizing, and the model is imported from the rest of the graph
//! as if the prefix's output were its input.
//!
//! Why not an ONNX runtime crate: tract-onnx, the maintained pure-Rust one, implements only
//! `CategoryMapper`, `LinearClassifier`, `LinearRegressor`, `Normalizer` and
//! `TreeEnsembleClassifier` of the `ai.onnx.ml` domain, none of `Imputer`, `OneHotEncoder`,
//! `Scaler`, `Binarizer`, `LabelEncoder`, `ArrayFeatureExtractor` or `FeatureVectorizer`, which
//! are what scikit-learn pipelines export. The operators here are the ONNX definitions,
//! checked against ONNX Runtime on every fixture row (`tests/integration/imports.rs`).

use crate::import::{Attrs, ImportError, invalid, unsupported};
use crate::proto::{Dimension, GraphProto, NodeProto, TensorProto, data_type};
use fhe_batch_core::model::prefix::{
    Arith, CastTo, ClientPrefix, Norm, PrefixOp, PrefixStep, TextColumn,
};
use std::collections::{HashMap, HashSet};

/// The operators a client-side prefix runs, by ONNX domain.
const ML_PREFIX_OPS: [&str; 9] = [
    "Imputer",
    "Scaler",
    "Normalizer",
    "Binarizer",
    "OneHotEncoder",
    "LabelEncoder",
    "ArrayFeatureExtractor",
    "FeatureVectorizer",
    "Identity",
];
const ONNX_PREFIX_OPS: [&str; 11] = [
    "Cast", "Identity", "Reshape", "Flatten", "Gather", "Concat", "Add", "Sub", "Mul", "Div",
    "Squeeze",
];

/// Whether `n` is an operator a client-side prefix can run.
pub(crate) fn is_prefix_op(n: &NodeProto) -> bool {
    match n.domain.as_str() {
        "ai.onnx.ml" => ML_PREFIX_OPS.contains(&n.op_type.as_str()),
        "" | "ai.onnx" => ONNX_PREFIX_OPS.contains(&n.op_type.as_str()),
        _ => false,
    }
}

/// One graph input: a block of raw columns (a data frame exports one per column).
struct RawInput<'g> {
    name: &'g str,
    width: usize,
    text: bool,
}

/// The graph's data inputs (initializers listed as inputs by older exporters excluded), in
/// order: the raw record is their columns side by side.
fn raw_inputs(graph: &GraphProto) -> Result<Vec<RawInput<'_>>, ImportError> {
    let mut out = Vec::new();
    for input in &graph.input {
        if constant(graph, &input.name).is_some() {
            continue;
        }
        let tensor = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let width = tensor
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| s.dim.get(1))
            .and_then(|d| d.dim_value)
            .filter(|&d| d > 0)
            .ok_or_else(|| ImportError::Invalid {
                op: "graph input".into(),
                detail: format!(
                    "{:?} declares no column count; the client-side preprocessing needs it",
                    input.name
                ),
            })? as usize;
        let text = match tensor.map_or(data_type::FLOAT, |t| t.elem_type) {
            data_type::STRING => true,
            data_type::FLOAT
            | data_type::DOUBLE
            | data_type::INT64
            | data_type::INT32
            | data_type::BOOL => false,
            other => {
                return Err(ImportError::Invalid {
                    op: "graph input".into(),
                    detail: format!(
                        "{:?} holds ONNX element type {other}; numbers and text are supported",
                        input.name
                    ),
                });
            }
        };
        out.push(RawInput {
            name: &input.name,
            width,
            text,
        });
    }
    if out.is_empty() {
        return Err(ImportError::NoGraph);
    }
    Ok(out)
}

/// The text categories met so far, per raw text column, and whether every encoder reading a
/// column ignores texts it was not fitted on.
#[derive(Default)]
struct Vocabularies(std::collections::BTreeMap<usize, (Vec<String>, bool)>);

impl Vocabularies {
    /// The codes of `categories` in the shared vocabulary of `columns` (appended where new),
    /// which must so far be the same for every one of them.
    fn codes(
        &mut self,
        n: &NodeProto,
        columns: &[usize],
        categories: &[String],
        ignores_unknown: bool,
    ) -> Result<Vec<usize>, ImportError> {
        let Some(&head) = columns.first() else {
            return Err(invalid(n, "encodes no column"));
        };
        let first = self.0.get(&head).cloned().unwrap_or_default();
        if columns
            .iter()
            .any(|c| self.0.get(c).map_or(&[][..], |v| &v.0[..]) != &first.0[..])
        {
            return Err(invalid(
                n,
                "encodes several text columns that other encoders gave different categories",
            ));
        }
        let mut vocab = first.0;
        let codes = categories
            .iter()
            .map(|c| match vocab.iter().position(|v| v == c) {
                Some(k) => k,
                None => {
                    vocab.push(c.clone());
                    vocab.len() - 1
                }
            })
            .collect();
        for &c in columns {
            let e = self.0.entry(c).or_insert_with(|| (Vec::new(), true));
            e.0 = vocab.clone();
            e.1 &= ignores_unknown;
        }
        Ok(codes)
    }
}

/// A step reading text columns: its operation on their codes, and the raw text columns of its
/// output when that is still text (a selection or concatenation of text columns).
fn text_step(
    graph: &GraphProto,
    n: &NodeProto,
    text: &[&[usize]],
    vocab: &mut Vocabularies,
    reshapes: &mut Vec<(usize, i64, String)>,
    step: usize,
) -> Result<(PrefixOp, Option<Vec<usize>>), ImportError> {
    let a = Attrs::new(n)?;
    let refuse = |what: &str| ImportError::UnsupportedPreprocessing {
        op_type: n.op_type.clone(),
        node: n.name.clone(),
        advice: format!(
            "it {what}; text columns may only be selected, concatenated and encoded by a \
             OneHotEncoder or a LabelEncoder to numbers (scikit-learn's OneHotEncoder and \
             OrdinalEncoder); encode the column as integers in the CSV and export the model on them"
        ),
    };
    match n.op_type.as_str() {
        "OneHotEncoder" => {
            let cats = a.strings("cats_strings")?;
            if cats.is_empty() {
                return Err(refuse("encodes text with integer categories"));
            }
            let zeros = a.int("zeros")?.unwrap_or(1) != 0;
            let codes = vocab.codes(n, text[0], &cats, zeros)?;
            Ok((
                PrefixOp::OneHot {
                    categories: codes.iter().map(|&c| c as i64).collect(),
                    zeros,
                },
                None,
            ))
        }
        "LabelEncoder" => {
            let keys = a.strings("keys_strings")?;
            if keys.is_empty() || !a.strings("values_strings")?.is_empty() {
                return Err(refuse("maps text to text, or has no text keys"));
            }
            let (values, default) = label_values(&a)?;
            if keys.len() != values.len() {
                return Err(invalid(n, "needs as many text keys as values"));
            }
            let codes = vocab.codes(n, text[0], &keys, true)?;
            Ok((
                PrefixOp::Map {
                    keys: codes.iter().map(|&c| c as f32).collect(),
                    values,
                    default,
                },
                None,
            ))
        }
        "ArrayFeatureExtractor" | "Gather" | "Identity" | "Reshape" | "Flatten" | "Squeeze" => {
            let op = prefix_op(graph, n, reshapes, step)?;
            let columns = match &op {
                PrefixOp::Select { columns } => columns
                    .iter()
                    .map(|&c| {
                        text[0].get(c).copied().ok_or_else(|| {
                            invalid(n, format!("selects column {c} of {}", text[0].len()))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => text[0].to_vec(),
            };
            Ok((op, Some(columns)))
        }
        "Concat" | "FeatureVectorizer" => {
            let op = prefix_op(graph, n, reshapes, step)?;
            Ok((op, Some(text.concat())))
        }
        _ => Err(refuse("reads a text column")),
    }
}

/// What the graph's inputs are called, one name per raw column, when a data frame exported
/// them (several inputs of one column each); `None` for one input block.
pub(crate) fn column_names(graph: &GraphProto) -> Result<Option<Vec<String>>, ImportError> {
    let raw = raw_inputs(graph)?;
    Ok((raw.len() > 1 && raw.iter().all(|r| r.width == 1))
        .then(|| raw.iter().map(|r| r.name.to_string()).collect()))
}

/// The graph with the nodes in `prefix` (everything computing `cut`, the model's input) taken
/// out and run as a [`ClientPrefix`] instead; the returned graph's input is `cut`, of the
/// prefix's output width.
///
/// The raw record is the graph inputs' columns side by side (a data frame's columns, each its
/// own input, in the graph's order); a text input's cells are read as category codes.
pub(crate) fn split(
    graph: &GraphProto,
    prefix: &HashSet<usize>,
    cut: &str,
) -> Result<(ClientPrefix, GraphProto), ImportError> {
    let raw = raw_inputs(graph)?;
    let inputs: usize = raw.iter().map(|r| r.width).sum();
    let mut values: HashMap<&str, usize> = HashMap::new();
    let mut steps: Vec<PrefixStep> = Vec::new();
    // Values holding text, with their raw columns.
    let mut text_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut at = 0;
    for r in &raw {
        let id = if raw.len() == 1 {
            0
        } else {
            steps.push(PrefixStep {
                op: PrefixOp::Select {
                    columns: (at..at + r.width).collect(),
                },
                inputs: vec![0],
            });
            steps.len()
        };
        values.insert(r.name, id);
        if r.text {
            text_of.insert(id, (at..at + r.width).collect());
        }
        at += r.width;
    }
    let mut vocab = Vocabularies::default();
    // Reshapes to `[-1, w]` are checked against the widths once the program is complete.
    let mut reshapes: Vec<(usize, i64, String)> = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        if !prefix.contains(&i) {
            continue;
        }
        if !is_prefix_op(n) {
            return Err(ImportError::UnsupportedPreprocessing {
                op_type: n.op_type.clone(),
                node: n.name.clone(),
                advice: format!(
                    "the client-side preprocessing runs Imputer, Scaler, Normalizer, Binarizer, \
                     OneHotEncoder, LabelEncoder (to numbers), ArrayFeatureExtractor, \
                     FeatureVectorizer, Gather, Concat, Cast, Reshape and arithmetic by \
                     constants; apply the {} to the records before encrypting and export the \
                     model without it",
                    n.op_type
                ),
            });
        }
        let [out] = n.output.as_slice() else {
            return Err(invalid(n, "expects one output"));
        };
        let data: Vec<&String> = n
            .input
            .iter()
            .filter(|x| !x.is_empty() && constant(graph, x).is_none())
            .collect();
        let mut ids = Vec::with_capacity(data.len());
        for x in &data {
            ids.push(*values.get(x.as_str()).ok_or_else(|| {
                invalid(
                    n,
                    format!(
                        "reads {x:?}, which neither the graph input nor the preprocessing computes"
                    ),
                )
            })?);
        }
        let text: Vec<&[usize]> = ids
            .iter()
            .filter_map(|id| text_of.get(id).map(Vec::as_slice))
            .collect();
        let (op, text_out) = if text.is_empty() {
            (prefix_op(graph, n, &mut reshapes, steps.len())?, None)
        } else if text.len() != ids.len() {
            return Err(invalid(n, "mixes text and number columns"));
        } else {
            text_step(graph, n, &text, &mut vocab, &mut reshapes, steps.len())?
        };
        if ids.is_empty() || (!matches!(op, PrefixOp::Concat) && ids.len() != 1) {
            return Err(invalid(n, format!("takes {} data inputs", ids.len())));
        }
        steps.push(PrefixStep { op, inputs: ids });
        values.insert(out.as_str(), steps.len());
        if let Some(columns) = text_out {
            text_of.insert(steps.len(), columns);
        }
    }
    let output = *values.get(cut).ok_or_else(|| ImportError::Invalid {
        op: "preprocessing".into(),
        detail: format!("the model's input {cut:?} is not computed from the graph input"),
    })?;
    if text_of.contains_key(&output) {
        return Err(ImportError::Invalid {
            op: "preprocessing".into(),
            detail: "the model reads text columns that no encoder turned into numbers".into(),
        });
    }
    let p = ClientPrefix {
        inputs,
        steps,
        output,
        text: vocab
            .0
            .into_iter()
            .map(|(column, (categories, unknown_allowed))| TextColumn {
                column,
                categories,
                unknown_allowed,
            })
            .collect(),
    };
    let widths = p.widths().map_err(|e| ImportError::Invalid {
        op: "preprocessing".into(),
        detail: e.to_string(),
    })?;
    for (step, w, node) in reshapes {
        let have = widths[step + 1];
        if w != -1 && w as usize != have {
            return Err(ImportError::Invalid {
                op: "Reshape".into(),
                detail: format!("node {node:?} reshapes {have} columns to {w}"),
            });
        }
    }
    let mut rest = graph.clone();
    rest.node = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| !prefix.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    // The rest reads the prefix's output alone (a data frame's other inputs are gone).
    rest.input.retain(|i| constant(graph, &i.name).is_none());
    rest.input.truncate(1);
    let first = &mut rest.input[0];
    first.name = cut.to_string();
    if let Some(t) = first.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
        t.elem_type = data_type::FLOAT;
    }
    if let Some(shape) = first
        .r#type
        .as_mut()
        .and_then(|t| t.tensor_type.as_mut())
        .and_then(|t| t.shape.as_mut())
    {
        shape.dim = vec![
            Dimension {
                dim_value: None,
                dim_param: Some("N".into()),
            },
            Dimension {
                dim_value: Some(widths[output] as i64),
                dim_param: None,
            },
        ];
    }
    Ok((p, rest))
}

/// One node as a prefix operation.
fn prefix_op(
    graph: &GraphProto,
    n: &NodeProto,
    reshapes: &mut Vec<(usize, i64, String)>,
    step: usize,
) -> Result<PrefixOp, ImportError> {
    let a = Attrs::new(n)?;
    let finite = |v: &[f32], what: &str| {
        if v.iter().all(|x| x.is_finite()) {
            Ok(())
        } else {
            Err(invalid(
                n,
                format!("{what} holds a value that is not finite"),
            ))
        }
    };
    Ok(match n.op_type.as_str() {
        "Imputer" => {
            let mut values = a.floats("imputed_value_floats")?;
            let mut replaced = a.float("replaced_value_float")?.unwrap_or(0.0);
            if values.is_empty() {
                values = a
                    .ints("imputed_value_int64s")?
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                replaced = a.int("replaced_value_int64")?.unwrap_or(0) as f32;
            }
            if values.is_empty() {
                return Err(invalid(n, "imputes no values"));
            }
            finite(&values, "imputed_value_floats")?;
            PrefixOp::Impute {
                replaced: (!replaced.is_nan()).then_some(replaced),
                values,
            }
        }
        "Scaler" => {
            let offset = a.floats("offset")?;
            let scale = a.floats("scale")?;
            finite(&offset, "offset")?;
            finite(&scale, "scale")?;
            if offset.is_empty() || scale.is_empty() {
                return Err(invalid(n, "needs offset and scale"));
            }
            PrefixOp::Scale { offset, scale }
        }
        "Normalizer" => {
            let norm = a.string("norm")?.unwrap_or_else(|| "MAX".into());
            PrefixOp::Normalize {
                norm: match norm.as_str() {
                    "MAX" => Norm::Max,
                    "L1" => Norm::L1,
                    "L2" => Norm::L2,
                    other => return Err(unsupported(n, "norm", other)),
                },
            }
        }
        "Binarizer" => PrefixOp::Binarize {
            threshold: a.float("threshold")?.unwrap_or(0.0),
        },
        "OneHotEncoder" => {
            if !a.strings("cats_strings")?.is_empty() {
                return Err(invalid(
                    n,
                    "has text categories but reads numbers, not a text column of the graph input",
                ));
            }
            let categories = a.ints("cats_int64s")?;
            if categories.is_empty() {
                return Err(invalid(n, "has no categories"));
            }
            PrefixOp::OneHot {
                categories,
                zeros: a.int("zeros")?.unwrap_or(1) != 0,
            }
        }
        "LabelEncoder" => {
            if !a.strings("keys_strings")?.is_empty() || !a.strings("values_strings")?.is_empty() {
                return Err(invalid(
                    n,
                    "maps text but reads numbers, not a text column of the graph input",
                ));
            }
            let keys = match a.floats("keys_floats")? {
                k if !k.is_empty() => k,
                _ => a.ints("keys_int64s")?.iter().map(|&v| v as f32).collect(),
            };
            let (values, default) = label_values(&a)?;
            if keys.is_empty() || keys.len() != values.len() {
                return Err(invalid(n, "needs as many numeric keys as values"));
            }
            PrefixOp::Map {
                keys,
                values,
                default,
            }
        }
        "ArrayFeatureExtractor" => PrefixOp::Select {
            columns: indices(graph, n, 1)?,
        },
        "Gather" => {
            if a.int("axis")?.unwrap_or(0) != 1 {
                return Err(unsupported(n, "axis", "other than 1 (columns)"));
            }
            PrefixOp::Select {
                columns: indices(graph, n, 1)?,
            }
        }
        "FeatureVectorizer" => PrefixOp::Concat,
        "Concat" => match a.int("axis")? {
            Some(1) | Some(-1) => PrefixOp::Concat,
            other => return Err(unsupported(n, "axis", &format!("{other:?}"))),
        },
        "Cast" => match a.int("to")?.map(|t| t as i32) {
            Some(data_type::FLOAT) | Some(data_type::DOUBLE) => {
                PrefixOp::Cast { to: CastTo::Float }
            }
            Some(data_type::INT64) | Some(data_type::INT32) => PrefixOp::Cast {
                to: CastTo::Integer,
            },
            other => return Err(unsupported(n, "to", &format!("{other:?}"))),
        },
        "Reshape" => {
            let shape = n
                .input
                .get(1)
                .and_then(|s| constant(graph, s))
                .and_then(ints)
                .unwrap_or_default();
            match shape.as_slice() {
                [-1 | 0, w] if *w == -1 || *w > 0 => reshapes.push((step, *w, n.name.clone())),
                other => {
                    return Err(invalid(
                        n,
                        format!(
                            "reshapes a record to {other:?}; only [-1, n] keeps one row per record"
                        ),
                    ));
                }
            }
            PrefixOp::Identity
        }
        "Flatten" => match a.int("axis")?.unwrap_or(1) {
            1 => PrefixOp::Identity,
            other => return Err(unsupported(n, "axis", &other.to_string())),
        },
        "Squeeze" | "Identity" => PrefixOp::Identity,
        "Add" | "Sub" | "Mul" | "Div" => {
            let [x, y] = n.input.as_slice() else {
                return Err(invalid(n, "expects two inputs"));
            };
            let (c, data_first) = match (constant(graph, x), constant(graph, y)) {
                (None, Some(c)) => (c, true),
                (Some(c), None) => (c, false),
                _ => return Err(invalid(n, "only arithmetic with a constant is supported")),
            };
            let constant = floats(c).ok_or_else(|| invalid(n, "the constant is not a float"))?;
            finite(&constant, "the constant")?;
            let op = match (n.op_type.as_str(), data_first) {
                ("Add", _) => Arith::Add,
                ("Mul", _) => Arith::Mul,
                ("Sub", true) => Arith::Sub,
                ("Sub", false) => Arith::SubFrom,
                ("Div", true) if !constant.contains(&0.0) => Arith::Div,
                ("Div", true) => return Err(invalid(n, "divides by zero")),
                _ => return Err(invalid(n, "divides a constant by the record")),
            };
            PrefixOp::Arith { op, constant }
        }
        _ => unreachable!("is_prefix_op admitted {}", n.op_type),
    })
}

/// A `LabelEncoder`'s numeric values and its default (ONNX's: `-0.0` for floats, `-1` for
/// integers).
fn label_values(a: &Attrs<'_>) -> Result<(Vec<f32>, f32), ImportError> {
    Ok(match a.floats("values_floats")? {
        v if !v.is_empty() => (v, a.float("default_float")?.unwrap_or(-0.0)),
        _ => (
            a.ints("values_int64s")?.iter().map(|&v| v as f32).collect(),
            a.int("default_int64")?.unwrap_or(-1) as f32,
        ),
    })
}

/// The initializer named `name`, if it is one.
fn constant<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

pub(crate) fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    match t.data_type {
        data_type::INT64 if !t.raw_data.is_empty() => Some(
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        data_type::INT64 => Some(t.int64_data.clone()),
        data_type::INT32 if !t.raw_data.is_empty() => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        data_type::INT32 => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => None,
    }
}

pub(crate) fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    match t.data_type {
        data_type::FLOAT if !t.raw_data.is_empty() => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        data_type::FLOAT => Some(t.float_data.clone()),
        data_type::DOUBLE if !t.raw_data.is_empty() => Some(
            t.raw_data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        data_type::DOUBLE => Some(t.double_data.iter().map(|&d| d as f32).collect()),
        _ => None,
    }
}

/// Column indices given as the constant input `at`.
fn indices(graph: &GraphProto, n: &NodeProto, at: usize) -> Result<Vec<usize>, ImportError> {
    let v = n
        .input
        .get(at)
        .and_then(|s| constant(graph, s))
        .and_then(ints)
        .ok_or_else(|| invalid(n, "its column indices are not an integer constant"))?;
    v.iter()
        .map(|&i| usize::try_from(i).map_err(|_| invalid(n, format!("column index {i}"))))
        .collect()
}
