//! Client-side preprocessing: what a model's pipeline does to a record before the model sees
//! it (imputing missing values, one-hot encoding categories, normalizing rows, selecting and
//! concatenating columns), run in plaintext on the data owner's machine before quantization
//! and encryption. It travels in the client part; the server never sees it and never needs to.
//!
//! A prefix is a small dataflow program over per-record vectors: value 0 is the raw record
//! (the client part's feature columns, missing cells as NaN), step `i` computes value `i + 1`
//! from earlier values, and [`ClientPrefix::output`] is what the model's quantizers read.
//! Arithmetic is in `f32`, as ONNX Runtime computes the same `tensor(float)` graph, so the
//! features match its outputs to the bit on the operators' own definitions.
//!
//! Affine per-feature preprocessing (StandardScaler, MinMaxScaler) with nothing else in front
//! of the model is folded into the model instead; a prefix holds everything else.

use serde::{Deserialize, Serialize};

/// Most steps a prefix may hold.
pub const MAX_PREFIX_STEPS: usize = 256;
/// Widest value a prefix may compute (one-hot encodings widen records).
pub const MAX_PREFIX_WIDTH: usize = 16_384;

/// A row normalizer's norm (ONNX `Normalizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Max,
    L1,
    L2,
}

/// Element-wise arithmetic with a constant (a scalar or one value per column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arith {
    Add,
    /// `x - c`.
    Sub,
    /// `c - x`.
    SubFrom,
    Mul,
    /// `x / c`.
    Div,
}

/// A cast's target (ONNX `Cast`): integer casts truncate toward zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CastTo {
    Float,
    Integer,
}

/// One operation. Per-column constants hold one value (broadcast) or one per column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrefixOp {
    /// `Imputer`: cells equal to `replaced` (`None`: missing cells, NaN) become `values[j]`.
    Impute {
        replaced: Option<f32>,
        values: Vec<f32>,
    },
    /// `Scaler`: `(x - offset) * scale`.
    Scale {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    /// `Add`/`Sub`/`Mul`/`Div` by constants.
    Arith {
        op: Arith,
        constant: Vec<f32>,
    },
    /// `Normalizer`: the row divided by its norm (a zero norm leaves the row unchanged).
    Normalize {
        norm: Norm,
    },
    /// `Binarizer`: `1` where `x > threshold`, else `0`.
    Binarize {
        threshold: f32,
    },
    /// `OneHotEncoder` on integer categories: each column becomes `categories.len()` columns;
    /// an unknown category is all zeros when `zeros`, and refuses the record otherwise.
    OneHot {
        categories: Vec<i64>,
        zeros: bool,
    },
    /// `LabelEncoder` on numbers: `keys[i]` becomes `values[i]`, anything else `default`.
    Map {
        keys: Vec<f32>,
        values: Vec<f32>,
        default: f32,
    },
    /// `ArrayFeatureExtractor` / `Gather` on columns: the listed columns, in order.
    Select {
        columns: Vec<usize>,
    },
    /// `Concat` / `FeatureVectorizer`: the inputs side by side.
    Concat,
    Cast {
        to: CastTo,
    },
    /// `Identity`, and `Reshape` / `Flatten` to one row per record.
    Identity,
}

impl PrefixOp {
    /// The ONNX operator it comes from, for reports and errors.
    pub fn name(&self) -> &'static str {
        match self {
            PrefixOp::Impute { .. } => "Imputer",
            PrefixOp::Scale { .. } => "Scaler",
            PrefixOp::Arith { op, .. } => match op {
                Arith::Add => "Add",
                Arith::Sub | Arith::SubFrom => "Sub",
                Arith::Mul => "Mul",
                Arith::Div => "Div",
            },
            PrefixOp::Normalize { .. } => "Normalizer",
            PrefixOp::Binarize { .. } => "Binarizer",
            PrefixOp::OneHot { .. } => "OneHotEncoder",
            PrefixOp::Map { .. } => "LabelEncoder",
            PrefixOp::Select { .. } => "ArrayFeatureExtractor",
            PrefixOp::Concat => "Concat",
            PrefixOp::Cast { .. } => "Cast",
            PrefixOp::Identity => "Identity",
        }
    }
}

/// One step: an operation on earlier values (`inputs`, indices into the values so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixStep {
    pub op: PrefixOp,
    pub inputs: Vec<usize>,
}

/// The preprocessing a client runs on every raw record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientPrefix {
    /// Raw values per record (value 0).
    pub inputs: usize,
    pub steps: Vec<PrefixStep>,
    /// The value the model reads.
    pub output: usize,
    /// Raw columns holding text categories (a data frame's string columns), read as codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<TextColumn>,
}

/// A raw column of text categories: each cell is read as its position in `categories`, the
/// integer codes the encoders reading the column were given at import (a `OneHotEncoder`'s
/// `cats_strings`, a `LabelEncoder`'s `keys_strings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextColumn {
    pub column: usize,
    pub categories: Vec<String>,
    /// Whether a text outside `categories` may be read (as code `-1`): every encoder reading
    /// the column then ignores it (a `OneHotEncoder` with `zeros`, a `LabelEncoder`'s default).
    pub unknown_allowed: bool,
}

impl TextColumn {
    /// The code of one cell (already known not to be missing), or why it has none.
    pub fn code(&self, cell: &str) -> Result<f64, PrefixError> {
        match self.categories.iter().position(|c| c == cell) {
            Some(k) => Ok(k as f64),
            None if self.unknown_allowed => Ok(-1.0),
            None => Err(PrefixError::Record(format!(
                "{cell:?} is not a category the pipeline's encoder was fitted on ({})",
                list_categories(&self.categories)
            ))),
        }
    }
}

/// The first few categories, for errors.
fn list_categories(c: &[String]) -> String {
    let shown: Vec<String> = c.iter().take(8).map(|s| format!("{s:?}")).collect();
    match c.len() {
        n if n > 8 => format!("{}, ... {} in all", shown.join(", "), n),
        _ => shown.join(", "),
    }
}

/// Why a prefix is malformed, or why a record cannot go through it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("invalid client-side preprocessing: {0}")]
    Invalid(String),
    /// A record the preprocessing cannot take; `column` is a raw column where known.
    #[error("{0}")]
    Record(String),
}

impl ClientPrefix {
    /// The width of every value (value 0 first), checking the program: inputs refer to
    /// earlier values, constants and indices fit, widths stay bounded.
    pub fn widths(&self) -> Result<Vec<usize>, PrefixError> {
        let bad = |m: String| Err(PrefixError::Invalid(m));
        if self.inputs == 0 || self.inputs > MAX_PREFIX_WIDTH {
            return bad(format!("{} raw inputs", self.inputs));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_PREFIX_STEPS {
            return bad(format!(
                "{} steps (1 to {MAX_PREFIX_STEPS})",
                self.steps.len()
            ));
        }
        let mut widths = vec![self.inputs];
        for (i, s) in self.steps.iter().enumerate() {
            let name = s.op.name();
            if s.inputs.is_empty() || s.inputs.iter().any(|&v| v >= widths.len()) {
                return bad(format!(
                    "step {i} ({name}) reads a value not computed before it"
                ));
            }
            if !matches!(s.op, PrefixOp::Concat) && s.inputs.len() != 1 {
                return bad(format!("step {i} ({name}) takes one input"));
            }
            let w = widths[s.inputs[0]];
            let per_column = |v: &[f32]| v.len() == 1 || v.len() == w;
            let out = match &s.op {
                PrefixOp::Impute { values, .. } if per_column(values) => w,
                PrefixOp::Scale { offset, scale } if per_column(offset) && per_column(scale) => w,
                PrefixOp::Arith { constant, .. } if per_column(constant) => w,
                PrefixOp::Impute { .. } | PrefixOp::Scale { .. } | PrefixOp::Arith { .. } => {
                    return bad(format!(
                        "step {i} ({name}) has constants for other than {w} columns"
                    ));
                }
                PrefixOp::OneHot { categories, .. } => {
                    if categories.is_empty() {
                        return bad(format!("step {i} ({name}) has no categories"));
                    }
                    w.saturating_mul(categories.len())
                }
                PrefixOp::Map { keys, values, .. } if keys.len() != values.len() => {
                    return bad(format!(
                        "step {i} ({name}): keys and values differ in number"
                    ));
                }
                PrefixOp::Select { columns } => {
                    if columns.is_empty() || columns.iter().any(|&c| c >= w) {
                        return bad(format!("step {i} ({name}) selects columns outside 0..{w}"));
                    }
                    columns.len()
                }
                PrefixOp::Concat => s.inputs.iter().map(|&v| widths[v]).sum(),
                PrefixOp::Normalize { .. }
                | PrefixOp::Binarize { .. }
                | PrefixOp::Map { .. }
                | PrefixOp::Cast { .. }
                | PrefixOp::Identity => w,
            };
            if out == 0 || out > MAX_PREFIX_WIDTH {
                return bad(format!("step {i} ({name}) computes {out} columns"));
            }
            widths.push(out);
        }
        if self.output >= widths.len() {
            return bad(format!("output value {} is not computed", self.output));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.text {
            if t.column >= self.inputs || !seen.insert(t.column) {
                return bad(format!(
                    "text column {} is outside 0..{} or listed twice",
                    t.column, self.inputs
                ));
            }
            if t.categories.is_empty() || t.categories.len() > MAX_PREFIX_WIDTH {
                return bad(format!(
                    "text column {} has {} categories",
                    t.column,
                    t.categories.len()
                ));
            }
        }
        Ok(widths)
    }

    /// The text column `column` is, if it is one.
    pub fn text_column(&self, column: usize) -> Option<&TextColumn> {
        self.text.iter().find(|t| t.column == column)
    }

    /// Features the model reads per record.
    pub fn outputs(&self) -> Result<usize, PrefixError> {
        Ok(self.widths()?[self.output])
    }

    /// Whether missing cells may be filled in (the program has an imputer for NaN).
    pub fn imputes(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(&s.op, PrefixOp::Impute { replaced: None, .. }))
    }

    /// The operators in program order, for reports ("Imputer, Scaler").
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for s in &self.steps {
            let n = s.op.name();
            if !matches!(s.op, PrefixOp::Identity | PrefixOp::Cast { .. }) && !names.contains(&n) {
                names.push(n);
            }
        }
        names.join(", ")
    }

    /// One raw record (missing cells NaN) to the model's features, or why it cannot be.
    /// The program must have passed [`ClientPrefix::widths`].
    pub fn apply(&self, record: &[f64]) -> Result<Vec<f64>, PrefixError> {
        if record.len() != self.inputs {
            return Err(PrefixError::Record(format!(
                "{} values for {} columns",
                record.len(),
                self.inputs
            )));
        }
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(self.steps.len() + 1);
        values.push(record.iter().map(|&v| v as f32).collect());
        for s in &self.steps {
            let x = &values[s.inputs[0]];
            let at = |c: &[f32], j: usize| if c.len() == 1 { c[0] } else { c[j] };
            let out: Vec<f32> = match &s.op {
                PrefixOp::Impute { replaced, values } => x
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        let hit = match replaced {
                            None => v.is_nan(),
                            Some(r) => v == *r,
                        };
                        if hit { at(values, j) } else { v }
                    })
                    .collect(),
                PrefixOp::Scale { offset, scale } => x
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| (v - at(offset, j)) * at(scale, j))
                    .collect(),
                PrefixOp::Arith { op, constant } => x
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        let c = at(constant, j);
                        match op {
                            Arith::Add => v + c,
                            Arith::Sub => v - c,
                            Arith::SubFrom => c - v,
                            Arith::Mul => v * c,
                            Arith::Div => v / c,
                        }
                    })
                    .collect(),
                // ONNX Runtime's definitions: MAX divides by the largest value (not the
                // largest magnitude), L2 takes sign(x) * sqrt(x^2 / sum(x^2)); a zero norm
                // leaves the row as it is.
                PrefixOp::Normalize { norm } => match norm {
                    Norm::Max => {
                        let m = x.iter().fold(f32::MIN, |m, &v| m.max(v));
                        x.iter()
                            .map(|v| if m == 0.0 { *v } else { v / m })
                            .collect()
                    }
                    Norm::L1 => {
                        let n: f32 = x.iter().map(|v| v.abs()).sum();
                        x.iter()
                            .map(|v| if n == 0.0 { *v } else { v / n })
                            .collect()
                    }
                    Norm::L2 => {
                        let n: f32 = x.iter().map(|v| v * v).sum();
                        x.iter()
                            .map(|&v| match n {
                                0.0 => v,
                                _ if v < 0.0 => -(v * v / n).sqrt(),
                                _ => (v * v / n).sqrt(),
                            })
                            .collect()
                    }
                },
                PrefixOp::Binarize { threshold } => x
                    .iter()
                    .map(|&v| if v > *threshold { 1.0 } else { 0.0 })
                    .collect(),
                PrefixOp::OneHot { categories, zeros } => {
                    let mut out = vec![0f32; x.len() * categories.len()];
                    for (j, &v) in x.iter().enumerate() {
                        let cat = integer(v, s.op.name())?;
                        match categories.iter().position(|&c| c == cat) {
                            Some(k) => out[j * categories.len() + k] = 1.0,
                            None if *zeros => {}
                            None => {
                                return Err(PrefixError::Record(format!(
                                    "category {cat} is not one the OneHotEncoder was fitted on"
                                )));
                            }
                        }
                    }
                    out
                }
                PrefixOp::Map {
                    keys,
                    values,
                    default,
                } => x
                    .iter()
                    .map(|&v| {
                        if v.is_nan() {
                            return Err(missing(s.op.name()));
                        }
                        Ok(keys
                            .iter()
                            .position(|&k| k == v)
                            .map_or(*default, |i| values[i]))
                    })
                    .collect::<Result<_, _>>()?,
                PrefixOp::Select { columns } => columns.iter().map(|&c| x[c]).collect(),
                PrefixOp::Concat => s
                    .inputs
                    .iter()
                    .flat_map(|&v| values[v].iter().copied())
                    .collect(),
                PrefixOp::Cast { to: CastTo::Float } | PrefixOp::Identity => x.clone(),
                PrefixOp::Cast {
                    to: CastTo::Integer,
                } => x
                    .iter()
                    .map(|&v| integer(v, "Cast").map(|i| i as f32))
                    .collect::<Result<_, _>>()?,
            };
            values.push(out);
        }
        let out = &values[self.output];
        if let Some(j) = out.iter().position(|v| v.is_nan()) {
            return Err(PrefixError::Record(format!(
                "feature {j} is missing after preprocessing (the pipeline imputes no value for it)"
            )));
        }
        Ok(out.iter().map(|&v| f64::from(v)).collect())
    }
}

fn missing(op: &str) -> PrefixError {
    PrefixError::Record(format!("a missing value reaches the {op}"))
}

/// A value read as an integer category (truncated toward zero, as ONNX Runtime casts).
fn integer(v: f32, op: &str) -> Result<i64, PrefixError> {
    if v.is_nan() {
        return Err(missing(op));
    }
    if v.abs() >= 9.0e15 {
        return Err(PrefixError::Record(format!(
            "{v} is out of the {op}'s integer range"
        )));
    }
    Ok(v.trunc() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(op: PrefixOp, inputs: &[usize]) -> PrefixStep {
        PrefixStep {
            op,
            inputs: inputs.to_vec(),
        }
    }

    /// A ColumnTransformer: columns 0-1 imputed and scaled, column 2 one-hot, concatenated.
    fn pipeline() -> ClientPrefix {
        ClientPrefix {
            text: Vec::new(),
            inputs: 3,
            steps: vec![
                step(
                    PrefixOp::Select {
                        columns: vec![0, 1],
                    },
                    &[0],
                ),
                step(
                    PrefixOp::Impute {
                        replaced: None,
                        values: vec![10.0, 20.0],
                    },
                    &[1],
                ),
                step(
                    PrefixOp::Scale {
                        offset: vec![1.0],
                        scale: vec![0.5, 2.0],
                    },
                    &[2],
                ),
                step(PrefixOp::Select { columns: vec![2] }, &[0]),
                step(
                    PrefixOp::Cast {
                        to: CastTo::Integer,
                    },
                    &[4],
                ),
                step(
                    PrefixOp::OneHot {
                        categories: vec![1, 2, 3],
                        zeros: true,
                    },
                    &[5],
                ),
                step(PrefixOp::Concat, &[3, 6]),
            ],
            output: 7,
        }
    }

    #[test]
    fn a_column_transformer_imputes_scales_and_encodes() {
        let p = pipeline();
        assert_eq!(p.widths().unwrap(), vec![3, 2, 2, 2, 1, 1, 3, 5]);
        assert!(p.imputes());
        assert_eq!(
            p.describe(),
            "ArrayFeatureExtractor, Imputer, Scaler, OneHotEncoder, Concat"
        );
        assert_eq!(
            p.apply(&[3.0, f64::NAN, 2.7]).unwrap(),
            vec![1.0, 38.0, 0.0, 1.0, 0.0]
        );
        // An unknown category encodes as zeros (scikit-learn's handle_unknown="ignore").
        assert_eq!(
            p.apply(&[1.0, 1.0, 9.0]).unwrap(),
            vec![0.0, 0.0, 0.0, 0.0, 0.0]
        );
        // A missing category is never silently a category.
        let e = p.apply(&[1.0, 1.0, f64::NAN]).unwrap_err();
        assert!(
            e.to_string().contains("missing value reaches the Cast"),
            "{e}"
        );
    }

    #[test]
    fn unimputed_missing_values_refuse_the_record() {
        let p = ClientPrefix {
            text: Vec::new(),
            inputs: 2,
            steps: vec![step(PrefixOp::Normalize { norm: Norm::L2 }, &[0])],
            output: 1,
        };
        assert!(!p.imputes());
        assert_eq!(
            p.apply(&[3.0, 4.0]).unwrap(),
            vec![0.6f32 as f64, 0.8f32 as f64]
        );
        assert_eq!(p.apply(&[0.0, 0.0]).unwrap(), vec![0.0, 0.0]);
        let e = p.apply(&[f64::NAN, 1.0]).unwrap_err();
        assert!(e.to_string().contains("imputes no value"), "{e}");
    }

    #[test]
    fn encoders_follow_onnx_semantics() {
        let one_hot = |zeros| ClientPrefix {
            text: Vec::new(),
            inputs: 2,
            steps: vec![step(
                PrefixOp::OneHot {
                    categories: vec![0, 5],
                    zeros,
                },
                &[0],
            )],
            output: 1,
        };
        assert_eq!(
            one_hot(false).apply(&[5.0, 0.0]).unwrap(),
            vec![0.0, 1.0, 1.0, 0.0]
        );
        let e = one_hot(false).apply(&[5.0, 7.0]).unwrap_err();
        assert!(e.to_string().contains("category 7"), "{e}");
        let map = ClientPrefix {
            text: Vec::new(),
            inputs: 1,
            steps: vec![
                step(
                    PrefixOp::Map {
                        keys: vec![1.0, 2.0],
                        values: vec![0.0, 1.0],
                        default: -1.0,
                    },
                    &[0],
                ),
                step(PrefixOp::Binarize { threshold: 0.5 }, &[1]),
            ],
            output: 1,
        };
        assert_eq!(map.apply(&[2.0]).unwrap(), vec![1.0]);
        assert_eq!(map.apply(&[3.0]).unwrap(), vec![-1.0]);
        let binarized = ClientPrefix { output: 2, ..map };
        assert_eq!(binarized.apply(&[2.0]).unwrap(), vec![1.0]);
        assert_eq!(binarized.apply(&[1.0]).unwrap(), vec![0.0]);
    }

    #[test]
    fn a_prefix_survives_the_client_part_json() {
        let p = pipeline();
        let json = serde_json::to_string(&p).unwrap();
        let back: ClientPrefix = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.apply(&[3.0, f64::NAN, 2.0]).unwrap(),
            p.apply(&[3.0, f64::NAN, 2.0]).unwrap()
        );
    }

    /// A data frame's text column: cells read as their category's position; a text the
    /// encoders were not fitted on reads as -1 only where they all ignore unknowns.
    #[test]
    fn text_columns_read_as_category_codes() {
        let mut p = pipeline();
        p.text = vec![TextColumn {
            column: 2,
            categories: vec!["north".into(), "south".into()],
            unknown_allowed: true,
        }];
        p.widths().unwrap();
        let t = p.text_column(2).unwrap();
        assert!(p.text_column(0).is_none());
        assert_eq!(t.code("south").unwrap(), 1.0);
        assert_eq!(t.code("west").unwrap(), -1.0);
        let strict = TextColumn {
            unknown_allowed: false,
            ..t.clone()
        };
        let e = strict.code("west").unwrap_err().to_string();
        assert!(
            e.contains("\"west\"") && e.contains("\"north\", \"south\""),
            "{e}"
        );
        // Survives the client part's JSON; absent from a prefix without text columns.
        let back: ClientPrefix = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(!serde_json::to_string(&pipeline()).unwrap().contains("text"));
        // A column outside the record, or listed twice, is refused.
        p.text.push(TextColumn {
            column: 2,
            categories: vec!["x".into()],
            unknown_allowed: true,
        });
        assert!(p.widths().unwrap_err().to_string().contains("listed twice"));
        p.text.pop();
        p.text[0].column = 3;
        assert!(p.widths().is_err());
    }

    #[test]
    fn malformed_programs_are_refused() {
        let mut p = pipeline();
        p.steps[0].inputs = vec![5];
        assert!(p.widths().is_err());
        let mut p = pipeline();
        p.steps[0].op = PrefixOp::Select {
            columns: vec![0, 3],
        };
        assert!(p.widths().unwrap_err().to_string().contains("outside 0..3"));
        let mut p = pipeline();
        p.steps[2].op = PrefixOp::Scale {
            offset: vec![1.0, 2.0, 3.0],
            scale: vec![1.0],
        };
        assert!(p.widths().is_err());
        let mut p = pipeline();
        p.output = 9;
        assert!(p.widths().is_err());
        let p = ClientPrefix {
            text: Vec::new(),
            inputs: 1,
            steps: vec![step(
                PrefixOp::OneHot {
                    categories: (0..20_000).collect(),
                    zeros: true,
                },
                &[0],
            )],
            output: 1,
        };
        assert!(p.widths().is_err());
        assert!(
            pipeline()
                .apply(&[1.0, 2.0])
                .unwrap_err()
                .to_string()
                .contains("2 values for 3 columns")
        );
    }
}
