//! Dense networks (multi-layer perceptrons) written with standard ONNX operators, as skl2onnx
//! exports scikit-learn's `MLPClassifier` / `MLPRegressor` and `torch.onnx.export` exports an
//! `nn.Sequential` of `Linear` layers and activations, into an [`Mlp`].
//!
//! The graph is walked as a dataflow from its one input. Every value is either a constant (an
//! initializer or a `Constant` node), the network's `[batch, width]` activations after some
//! chain of steps, or a piece of a classifier's label plumbing; any operator used in another
//! way is refused with a typed error naming it.
//!
//! * Dense layer: `MatMul` (weights `[in, out]`) followed by `Add` of the bias, or `Gemm`
//!   (`transA = 0`, any `transB`, `alpha`, `beta`). Consecutive affine operations with no
//!   activation between them are composed into one layer. A `BatchNormalization` directly after
//!   a dense layer (possibly after its bias `Add`) is folded into that layer's weights;
//!   anywhere else it is refused as an unsupported operator.
//! * Activation: `Relu`, `LeakyRelu` (its `alpha`), `Tanh`, `Sigmoid` after a dense layer.
//! * Element-wise affine operations by constants (`Add`, `Sub`, `Mul`, `Div` with a scalar or a
//!   per-feature vector, the ai.onnx.ml `Scaler`): in front of the first layer they become
//!   [`Mlp::scaler`] (how skl2onnx writes `StandardScaler` and `MinMaxScaler`, and how a module
//!   whose forward begins with `(x - mean) / std` exports); between layers they are folded into
//!   the next layer's weights.
//! * Shape-preserving helpers on `[batch, features]`: `Identity`, `Cast` to float, `Dropout`
//!   (the identity at inference), `Reshape` to `[-1 or 0, width]`, `Flatten(axis = 1)`.
//! * Output transform ([`Mlp::post`]): a final `Softmax` gives `Softmax`, a final `LogSoftmax`
//!   (PyTorch's classic classifier ending) `LogSoftmax`; a final `Sigmoid` on a
//!   single unit gives `Logistic`; no activation after the last layer gives `None`. A `Relu` or
//!   `Tanh` on the output layer, a `Sigmoid` on a wider one (multi-label), or an operation after
//!   the `Softmax` are refused.
//! * skl2onnx's classifier plumbing after the output layer is recognised and skipped: `Sub(1, p)`
//!   and `Concat` building `[1 - p, p]`, `ArgMax`, `ArrayFeatureExtractor` over the class labels
//!   (an INT32/INT64/STRING initializer: the classes), `Reshape`, `Cast`, `ZipMap`.
//!
//! The task:
//!
//! * labels picked by `ArrayFeatureExtractor` (skl2onnx classifiers): a classifier with those
//!   labels, whose output width is the number of classes, or one unit with `Sigmoid` for two;
//! * no labels, from skl2onnx (its classifiers always have them): a regressor;
//! * no labels, from anything else (a PyTorch-style graph cannot say whether it is a
//!   regressor): a classifier with the labels `"0"`..`"C-1"` when the output has `C > 1`
//!   columns (the label is the argmax of the output, the scores are the output itself, logits
//!   when there is no `Softmax`), a regressor when it has one column. [`Mlp::as_regressor`]
//!   overrides the first rule for a multi-output regressor.
//!
//! Limits: at most [`MAX_HIDDEN_LAYERS`] hidden layers after composition, every layer at most
//! [`MAX_WIDTH`] wide, at most [`MAX_FEATURES`] input features.

use crate::import::{Attrs, ImportError};
use crate::model::{Activation, Dense, ElemOp, Mlp, OnnxTask, PostTransform, Preprocess, Scaler};
use crate::proto::{GraphProto, NodeProto, TensorProto, attr_type, data_type};
use fhe_batch_core::model::MAX_FEATURES;
use std::collections::HashMap;
use std::rc::Rc;

/// Most hidden layers (after composing consecutive affine operations).
pub const MAX_HIDDEN_LAYERS: usize = 4;
/// Widest layer (hidden or output).
pub const MAX_WIDTH: usize = 1024;

/// Most multiply-adds spent composing consecutive dense layers that have no activation between
/// them (two 1024 x 1024 layers take 2^30).
const MAX_COMPOSE_WORK: usize = 1 << 30;

/// What [`crate::Imported::op_type`] says for a dense network.
pub const MLP_OP_TYPE: &str = "MLP";

/// Standard-domain operators a dense network may use.
const DENSE_OPS: [&str; 24] = [
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "Identity",
    "Cast",
    "Dropout",
    "Reshape",
    "Flatten",
    "Constant",
    "ArgMax",
    "Concat",
    "ArrayFeatureExtractor",
    "ZipMap",
    "Scaler",
];
/// Of those, the ones in the ai.onnx.ml domain.
const ML_OPS: [&str; 3] = ["ArrayFeatureExtractor", "ZipMap", "Scaler"];

/// Whether a dense network may hold `node`'s operator (before looking at how it is used).
pub(crate) fn is_dense_op(node: &NodeProto) -> bool {
    let op = node.op_type.as_str();
    if ML_OPS.contains(&op) {
        node.domain == "ai.onnx.ml"
    } else {
        DENSE_OPS.contains(&op) && (node.domain.is_empty() || node.domain == "ai.onnx")
    }
}

/// A constant tensor's elements.
#[derive(Debug, Clone)]
enum Data {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Str(Vec<String>),
}

#[derive(Debug, Clone)]
struct Tensor {
    dims: Vec<usize>,
    data: Data,
}

impl Tensor {
    fn len(&self) -> usize {
        match &self.data {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }
}

/// `y = (x - offset) * scale + shift` per column; each vector has one entry (broadcast) or one
/// per column.
#[derive(Debug, Clone)]
struct Diag {
    offset: Vec<f64>,
    scale: Vec<f64>,
    shift: Vec<f64>,
}

impl Diag {
    fn at(v: &[f64], i: usize) -> f64 {
        if v.len() == 1 { v[0] } else { v[i] }
    }

    fn width(&self) -> Option<usize> {
        [&self.offset, &self.scale, &self.shift]
            .iter()
            .map(|v| v.len())
            .find(|&n| n != 1)
    }

    /// `(o, s, c)` of column `i`.
    fn get(&self, i: usize) -> (f64, f64, f64) {
        (
            Self::at(&self.offset, i),
            Self::at(&self.scale, i),
            Self::at(&self.shift, i),
        )
    }

    /// `self` then `next`, over `width` columns.
    fn then(&self, next: &Diag, width: usize) -> Diag {
        let (mut offset, mut scale, mut shift) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..width {
            let (o1, s1, c1) = self.get(i);
            let (o2, s2, c2) = next.get(i);
            // ((x - o1) s1 + c1 - o2) s2 + c2 = (x - o1) (s1 s2) + (c1 - o2) s2 + c2
            offset.push(o1);
            scale.push(s1 * s2);
            shift.push((c1 - o2) * s2 + c2);
        }
        Diag {
            offset,
            scale,
            shift,
        }
    }

    fn expand(&self, width: usize) -> Diag {
        self.then(
            &Diag {
                offset: vec![0.0],
                scale: vec![1.0],
                shift: vec![0.0],
            },
            width,
        )
    }
}

/// A dense layer in f64 while the graph is composed: `W x + b`, `W` row-major `out x in`.
#[derive(Debug, Clone)]
struct Affine {
    inputs: usize,
    outputs: usize,
    weights: Vec<f64>,
    bias: Vec<f64>,
}

impl Affine {
    /// `self` after `d` on its input: `W ((x - o) s + c) + b = (W diag s) x + b + W (c - o s)`.
    fn after_input(&mut self, d: &Diag) {
        for r in 0..self.outputs {
            let row = &mut self.weights[r * self.inputs..(r + 1) * self.inputs];
            let mut extra = 0.0;
            for (i, w) in row.iter_mut().enumerate() {
                let (o, s, c) = d.get(i);
                extra += *w * (c - o * s);
                *w *= s;
            }
            self.bias[r] += extra;
        }
    }

    /// `d` applied to this layer's output.
    fn then_diag(&mut self, d: &Diag) {
        for r in 0..self.outputs {
            let (o, s, c) = d.get(r);
            self.weights[r * self.inputs..(r + 1) * self.inputs]
                .iter_mut()
                .for_each(|w| *w *= s);
            self.bias[r] = (self.bias[r] - o) * s + c;
        }
    }

    /// `next` applied to this layer's output (`next.inputs == self.outputs`).
    fn then_affine(&self, next: &Affine) -> Affine {
        let mut weights = vec![0.0; next.outputs * self.inputs];
        let mut bias = next.bias.clone();
        for r in 0..next.outputs {
            for k in 0..self.outputs {
                let w = next.weights[r * next.inputs + k];
                if w == 0.0 {
                    continue;
                }
                bias[r] += w * self.bias[k];
                let src = &self.weights[k * self.inputs..(k + 1) * self.inputs];
                let dst = &mut weights[r * self.inputs..(r + 1) * self.inputs];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
            }
        }
        Affine {
            inputs: self.inputs,
            outputs: next.outputs,
            weights,
            bias,
        }
    }
}

#[derive(Debug, Clone)]
enum StepOp {
    Input,
    Linear(Rc<Affine>),
    Diag(Rc<Diag>),
    Act(Activation),
    /// `Softmax`, or `LogSoftmax` when `log`.
    Softmax {
        log: bool,
    },
}

/// One operation on the network's activations; steps form a tree rooted at the graph input.
#[derive(Debug)]
struct Step {
    parent: Option<usize>,
    op: StepOp,
    /// Columns, when known (the input's may not be declared).
    width: Option<usize>,
    /// An element-wise step's operator as ONNX Runtime computes it in f32 (what a classical
    /// model's preprocessing is evaluated and folded with: [`Walk::preprocess`]).
    exact: Option<ElemOp>,
}

#[derive(Debug, Clone)]
enum Value {
    Const(Rc<Tensor>),
    /// The network's activations after step `k`.
    Net(usize),
    /// `1 - p` of a one-unit `Sigmoid` output (step `k`).
    Complement(usize),
    /// `[1 - p, p]` of a one-unit `Sigmoid` output (step `k`).
    BinaryProbs(usize),
    /// The argmax over the columns of step `k`'s output.
    ArgMax(usize),
    /// The class labels the argmax of step `k` picks.
    Labels(usize, Rc<Vec<String>>),
    /// An output the network never reads (Dropout's mask).
    Unused,
}

/// The dataflow walk over a graph: every named value, and the network's steps.
pub(crate) struct Walk<'g> {
    graph: &'g GraphProto,
    inits: HashMap<&'g str, &'g TensorProto>,
    values: HashMap<String, Value>,
    steps: Vec<Step>,
}

fn node_err(node: &NodeProto, detail: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        op: if node.name.is_empty() {
            node.op_type.clone()
        } else {
            format!("{} (node {:?})", node.op_type, node.name)
        },
        detail: detail.into(),
    }
}

fn graph_err(detail: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        op: "dense network".into(),
        detail: detail.into(),
    }
}

fn too_large(what: impl Into<String>, value: usize, limit: usize) -> ImportError {
    ImportError::NetworkTooLarge {
        what: what.into(),
        value,
        limit,
    }
}

fn unsupported_op(node: &NodeProto) -> ImportError {
    ImportError::UnsupportedOperator {
        op_type: node.op_type.clone(),
        domain: node.domain.clone(),
        node: node.name.clone(),
    }
}

fn unsupported_attr(node: &NodeProto, attr: &str, value: impl ToString) -> ImportError {
    ImportError::UnsupportedAttribute {
        op: node.op_type.clone(),
        attr: attr.to_string(),
        value: value.to_string(),
    }
}

/// Decodes a constant tensor, checking that its element count matches its dimensions.
fn tensor(t: &TensorProto) -> Result<Tensor, ImportError> {
    let err = |detail: String| ImportError::Invalid {
        op: format!("tensor {:?}", t.name),
        detail,
    };
    if t.data_location != 0 {
        return Err(err("external data is not supported".into()));
    }
    let mut n = 1usize;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| err(format!("dimension {d}")))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= crate::import::MAX_ONNX_BYTES)
            .ok_or_else(|| err(format!("dimensions {:?} are too large", t.dims)))?;
        dims.push(d);
    }
    let raw = &t.raw_data;
    let fixed = |size: usize| -> Result<Option<Vec<&[u8]>>, ImportError> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() != n * size {
            return Err(err(format!(
                "{} bytes of raw data for {n} elements",
                raw.len()
            )));
        }
        Ok(Some(raw.chunks_exact(size).collect()))
    };
    let data = match t.data_type {
        data_type::FLOAT => Data::Float(match fixed(4)? {
            Some(c) => c
                .iter()
                .map(|b| f32::from_le_bytes((*b).try_into().expect("4 bytes")) as f64)
                .collect(),
            None => t.float_data.iter().map(|&v| v as f64).collect(),
        }),
        data_type::DOUBLE => Data::Float(match fixed(8)? {
            Some(c) => c
                .iter()
                .map(|b| f64::from_le_bytes((*b).try_into().expect("8 bytes")))
                .collect(),
            None => t.double_data.clone(),
        }),
        data_type::INT32 => Data::Int(match fixed(4)? {
            Some(c) => c
                .iter()
                .map(|b| i32::from_le_bytes((*b).try_into().expect("4 bytes")) as i64)
                .collect(),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        data_type::BOOL => Data::Int(match fixed(1)? {
            Some(c) => c.iter().map(|b| b[0] as i64).collect(),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        data_type::INT64 => Data::Int(match fixed(8)? {
            Some(c) => c
                .iter()
                .map(|b| i64::from_le_bytes((*b).try_into().expect("8 bytes")))
                .collect(),
            None => t.int64_data.clone(),
        }),
        data_type::STRING => Data::Str(
            t.string_data
                .iter()
                .map(|s| {
                    String::from_utf8(s.clone()).map_err(|_| err("a string is not UTF-8".into()))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(err(format!("data type {other} is not supported"))),
    };
    let tensor = Tensor { dims, data };
    if tensor.len() != n {
        return Err(err(format!(
            "{} elements for dimensions {:?}",
            tensor.len(),
            t.dims
        )));
    }
    Ok(tensor)
}

fn floats_of<'t>(node: &NodeProto, t: &'t Tensor) -> Result<&'t [f64], ImportError> {
    match &t.data {
        Data::Float(v) => Ok(v),
        _ => Err(node_err(node, "expects a floating-point constant")),
    }
}

fn ints_of<'t>(node: &NodeProto, t: &'t Tensor) -> Result<&'t [i64], ImportError> {
    match &t.data {
        Data::Int(v) => Ok(v),
        _ => Err(node_err(node, "expects an integer constant")),
    }
}

impl<'g> Walk<'g> {
    /// Walks `graph`, which holds only operators [`is_dense_op`] accepts.
    pub(crate) fn new(graph: &'g GraphProto) -> Result<Self, ImportError> {
        let mut walk = Self::start(graph)?;
        for node in &graph.node {
            walk.node(node)?;
        }
        Ok(walk)
    }

    /// A walk that has read the graph's input and no node yet: feed it nodes with
    /// [`Walk::node`] (a classical model's preprocessing, [`Walk::preprocess`]).
    pub(crate) fn start(graph: &'g GraphProto) -> Result<Self, ImportError> {
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut walk = Walk {
            graph,
            inits,
            values: HashMap::new(),
            steps: Vec::new(),
        };
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !walk.inits.contains_key(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(graph_err(format!(
                "the graph has {} inputs; a dense network reads one [batch, features] tensor",
                inputs.len()
            )));
        };
        let width = match input
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
        {
            None => None,
            Some(shape) if shape.dim.len() != 2 => {
                return Err(graph_err(format!(
                    "the input {:?} has {} dimensions; a dense network reads [batch, features]",
                    input.name,
                    shape.dim.len()
                )));
            }
            Some(shape) => shape.dim[1]
                .dim_value
                .filter(|&d| d > 0)
                .map(|d| d as usize),
        };
        if let Some(w) = width
            && w > MAX_FEATURES
        {
            return Err(too_large("the number of input features", w, MAX_FEATURES));
        }
        walk.steps.push(Step {
            parent: None,
            op: StepOp::Input,
            width,
            exact: None,
        });
        walk.values.insert(input.name.clone(), Value::Net(0));
        Ok(walk)
    }

    /// The element-wise operators between the graph's input and the value `name` (a classical
    /// model operator's input), in order; `None` when `name` is the input itself. Anything but
    /// element-wise operators by constants (and shape-preserving helpers) on that path is
    /// refused.
    pub(crate) fn preprocess(&self, name: &str) -> Result<Option<Preprocess>, ImportError> {
        let Some(Value::Net(end)) = self.values.get(name) else {
            return Err(graph_err(format!(
                "the model operator reads {name:?}, which is not the graph's input after \
                 per-feature operations"
            )));
        };
        let mut ops = Vec::new();
        let mut k = Some(*end);
        while let Some(i) = k {
            let step = &self.steps[i];
            match (&step.op, &step.exact) {
                (StepOp::Input, _) => {}
                (StepOp::Diag(_), Some(op)) => ops.push(op.clone()),
                _ => {
                    return Err(graph_err(
                        "only per-feature Scaler/Add/Sub/Mul/Div by constants may come before \
                         a linear model or a tree ensemble",
                    ));
                }
            }
            k = step.parent;
        }
        ops.reverse();
        Ok((!ops.is_empty()).then_some(Preprocess { ops }))
    }

    fn value(&mut self, node: &NodeProto, name: &str) -> Result<Value, ImportError> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        let Some(t) = self.inits.get(name) else {
            return Err(node_err(
                node,
                format!("reads {name:?}, which no earlier node or initializer provides"),
            ));
        };
        let v = Value::Const(Rc::new(tensor(t)?));
        self.values.insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn input(&mut self, node: &NodeProto, i: usize) -> Result<Value, ImportError> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => self.value(node, name),
            None => Err(node_err(node, format!("input {i} is missing"))),
        }
    }

    fn opt_input(&mut self, node: &NodeProto, i: usize) -> Result<Option<Value>, ImportError> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => self.value(node, name).map(Some),
            None => Ok(None),
        }
    }

    fn constant(&mut self, node: &NodeProto, i: usize) -> Result<Rc<Tensor>, ImportError> {
        match self.input(node, i)? {
            Value::Const(t) => Ok(t),
            _ => Err(node_err(node, format!("input {i} must be a constant"))),
        }
    }

    fn net(&mut self, node: &NodeProto, i: usize) -> Result<usize, ImportError> {
        match self.input(node, i)? {
            Value::Net(k) => Ok(k),
            _ => Err(node_err(
                node,
                format!("input {i} must be the network's [batch, features] values"),
            )),
        }
    }

    fn push(&mut self, parent: usize, op: StepOp, width: Option<usize>) -> Value {
        self.steps.push(Step {
            parent: Some(parent),
            op,
            width,
            exact: None,
        });
        Value::Net(self.steps.len() - 1)
    }

    fn set(&mut self, node: &NodeProto, i: usize, v: Value) -> Result<(), ImportError> {
        let Some(name) = node.output.get(i).filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        if self.values.contains_key(name.as_str()) || self.inits.contains_key(name.as_str()) {
            return Err(node_err(node, format!("{name:?} is produced twice")));
        }
        self.values.insert(name.clone(), v);
        Ok(())
    }

    pub(crate) fn node(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let attrs = Attrs::new(node)?;
        let out = match node.op_type.as_str() {
            "Identity" => self.input(node, 0)?,
            "Cast" => {
                let v = self.input(node, 0)?;
                let to = attrs.int("to")?.unwrap_or(0);
                if matches!(v, Value::Net(_) | Value::BinaryProbs(_))
                    && to != data_type::FLOAT as i64
                {
                    return Err(unsupported_attr(node, "to", to));
                }
                v
            }
            "Dropout" => {
                let v = Value::Net(self.net(node, 0)?);
                if let Some(mode) = self.opt_input(node, 2)? {
                    let Value::Const(t) = mode else {
                        return Err(node_err(node, "training_mode must be a constant"));
                    };
                    if ints_of(node, &t)?.iter().any(|&m| m != 0) {
                        return Err(unsupported_attr(node, "training_mode", "true"));
                    }
                }
                self.set(node, 1, Value::Unused)?;
                v
            }
            "Constant" => Value::Const(Rc::new(constant_attr(node, &attrs)?)),
            "Reshape" | "Flatten" => self.reshape(node, &attrs)?,
            "MatMul" => {
                if matches!(self.input(node, 0)?, Value::Const(_)) {
                    return Err(node_err(
                        node,
                        "the weights are on the left; a dense layer multiplies [batch, in] by [in, out]",
                    ));
                }
                let k = self.net(node, 0)?;
                let b = self.constant(node, 1)?;
                let [n_in, n_out] = b.dims[..] else {
                    return Err(node_err(
                        node,
                        format!("weights of shape {:?}; [in, out] expected", b.dims),
                    ));
                };
                let w = floats_of(node, &b)?;
                let mut weights = vec![0.0; n_in * n_out];
                for i in 0..n_in {
                    for o in 0..n_out {
                        weights[o * n_in + i] = w[i * n_out + o];
                    }
                }
                self.linear(node, k, n_in, n_out, weights, vec![0.0; n_out])?
            }
            "Gemm" => self.gemm(node, &attrs)?,
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node)?,
            "Relu" | "LeakyRelu" | "Tanh" | "Sigmoid" => {
                let k = self.net(node, 0)?;
                let act = match node.op_type.as_str() {
                    "Relu" => Activation::Relu,
                    "LeakyRelu" => {
                        let alpha = attrs.float("alpha")?.unwrap_or(0.01);
                        if !alpha.is_finite() {
                            return Err(unsupported_attr(node, "alpha", alpha));
                        }
                        Activation::LeakyRelu(alpha)
                    }
                    "Tanh" => Activation::Tanh,
                    _ => Activation::Sigmoid,
                };
                self.push(k, StepOp::Act(act), self.steps[k].width)
            }
            "Softmax" | "LogSoftmax" => {
                let k = self.net(node, 0)?;
                if let Some(axis) = attrs.int("axis")?
                    && axis != 1
                    && axis != -1
                {
                    return Err(unsupported_attr(node, "axis", axis));
                }
                let log = node.op_type == "LogSoftmax";
                self.push(k, StepOp::Softmax { log }, self.steps[k].width)
            }
            "BatchNormalization" => self.batch_norm(node, &attrs)?,
            "Scaler" => {
                let k = self.net(node, 0)?;
                let offset = attrs.floats("offset")?;
                let scale = attrs.floats("scale")?;
                let offset = if offset.is_empty() { vec![0.0] } else { offset };
                let scale = if scale.is_empty() { vec![1.0] } else { scale };
                let d = Diag {
                    offset: offset.iter().map(|&v| v as f64).collect(),
                    scale: scale.iter().map(|&v| v as f64).collect(),
                    shift: vec![0.0],
                };
                let exact = ElemOp::Scaler(Scaler { offset, scale });
                self.diag(node, k, d, Some(exact))?
            }
            "Concat" => {
                check_column_axis(node, &attrs, None)?;
                match (self.input(node, 0)?, self.input(node, 1)?) {
                    (Value::Complement(a), Value::Net(b)) if a == b && node.input.len() == 2 => {
                        Value::BinaryProbs(a)
                    }
                    _ => {
                        return Err(node_err(
                            node,
                            "only [1 - p, p] of a one-unit Sigmoid output (a binary classifier's probabilities) may be concatenated",
                        ));
                    }
                }
            }
            "ArgMax" => {
                check_column_axis(node, &attrs, Some(0))?;
                if attrs.int("select_last_index")?.unwrap_or(0) != 0 {
                    return Err(unsupported_attr(node, "select_last_index", 1));
                }
                match self.input(node, 0)? {
                    Value::BinaryProbs(k) => Value::ArgMax(k),
                    Value::Net(k) if self.steps[k].width.is_some_and(|w| w > 1) => Value::ArgMax(k),
                    _ => {
                        return Err(node_err(
                            node,
                            "only the argmax over the columns of the network's output is supported",
                        ));
                    }
                }
            }
            "ArrayFeatureExtractor" => {
                let classes = self.constant(node, 0)?;
                let Value::ArgMax(k) = self.input(node, 1)? else {
                    return Err(node_err(
                        node,
                        "only picking class labels by the output's argmax is supported",
                    ));
                };
                let labels: Vec<String> = match &classes.data {
                    Data::Int(v) => v.iter().map(|i| i.to_string()).collect(),
                    Data::Str(v) => v.clone(),
                    Data::Float(_) => {
                        return Err(node_err(node, "class labels must be integers or strings"));
                    }
                };
                if classes.dims.len() > 1 {
                    return Err(node_err(node, "class labels must be a vector"));
                }
                Value::Labels(k, Rc::new(labels))
            }
            "ZipMap" => match self.input(node, 0)? {
                v @ (Value::Net(_) | Value::BinaryProbs(_)) => v,
                _ => return Err(node_err(node, "expects the classifier's probabilities")),
            },
            _ => return Err(unsupported_op(node)),
        };
        self.set(node, 0, out)
    }

    /// `Reshape` / `Flatten` that keep `[batch, width]` as it is.
    fn reshape(&mut self, node: &NodeProto, attrs: &Attrs) -> Result<Value, ImportError> {
        let v = self.input(node, 0)?;
        let width = match &v {
            // The labels and their index are one value per record, whatever the shape.
            Value::Labels(..) | Value::ArgMax(_) => return Ok(v),
            Value::Net(k) => self.steps[*k].width,
            Value::BinaryProbs(_) => Some(2),
            _ => return Err(node_err(node, "expects the network's values")),
        };
        if node.op_type == "Flatten" {
            let axis = attrs.int("axis")?.unwrap_or(1);
            if axis != 1 && axis != -1 {
                return Err(unsupported_attr(node, "axis", axis));
            }
            return Ok(v);
        }
        let shape = self.constant(node, 1)?;
        let shape = ints_of(node, &shape)?;
        let zero_is_copy = attrs.int("allowzero")?.unwrap_or(0) == 0;
        let batch_ok = |d: i64| d == -1 || (d == 0 && zero_is_copy);
        let ok = match shape {
            [b, -1] => batch_ok(*b) && *b == 0,
            [b, w] => batch_ok(*b) && width.is_some_and(|width| *w == width as i64),
            _ => false,
        };
        if !ok {
            return Err(node_err(
                node,
                format!(
                    "reshapes [batch, {}] to {shape:?}; only shape-preserving reshapes are supported",
                    width.map_or("?".to_string(), |w| w.to_string())
                ),
            ));
        }
        Ok(v)
    }

    fn linear(
        &mut self,
        node: &NodeProto,
        k: usize,
        inputs: usize,
        outputs: usize,
        weights: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Value, ImportError> {
        if inputs == 0 || outputs == 0 {
            return Err(node_err(node, "a layer with no inputs or no outputs"));
        }
        if let Some(w) = self.steps[k].width
            && w != inputs
        {
            return Err(node_err(
                node,
                format!("weights for {inputs} inputs applied to {w} columns"),
            ));
        }
        if self.steps[k].width.is_none() && inputs > MAX_FEATURES {
            return Err(too_large(
                "the number of input features",
                inputs,
                MAX_FEATURES,
            ));
        }
        if outputs > MAX_WIDTH {
            return Err(too_large(
                format!("the width of layer {}", node.name),
                outputs,
                MAX_WIDTH,
            ));
        }
        if bias.len() != outputs {
            return Err(node_err(
                node,
                format!("{} biases for {outputs} outputs", bias.len()),
            ));
        }
        if weights.iter().chain(&bias).any(|v| !v.is_finite()) {
            return Err(node_err(node, "a weight or bias is not finite"));
        }
        let affine = Affine {
            inputs,
            outputs,
            weights,
            bias,
        };
        Ok(self.push(k, StepOp::Linear(Rc::new(affine)), Some(outputs)))
    }

    fn gemm(&mut self, node: &NodeProto, attrs: &Attrs) -> Result<Value, ImportError> {
        if attrs.int("transA")?.unwrap_or(0) != 0 {
            return Err(unsupported_attr(node, "transA", 1));
        }
        let trans_b = attrs.int("transB")?.unwrap_or(0) != 0;
        let alpha = attrs.float("alpha")?.unwrap_or(1.0) as f64;
        let beta = attrs.float("beta")?.unwrap_or(1.0) as f64;
        let k = self.net(node, 0)?;
        let b = self.constant(node, 1)?;
        let [r, c] = b.dims[..] else {
            return Err(node_err(
                node,
                format!("weights of shape {:?}; a matrix expected", b.dims),
            ));
        };
        let w = floats_of(node, &b)?;
        let (n_in, n_out) = if trans_b { (c, r) } else { (r, c) };
        let mut weights = vec![0.0; n_in * n_out];
        for o in 0..n_out {
            for i in 0..n_in {
                let v = if trans_b {
                    w[o * n_in + i]
                } else {
                    w[i * n_out + o]
                };
                weights[o * n_in + i] = alpha * v;
            }
        }
        let bias = match self.opt_input(node, 2)? {
            None => vec![0.0; n_out],
            Some(Value::Const(t)) => {
                let v = floats_of(node, &t)?;
                let shape_ok = match t.dims[..] {
                    [] => true,
                    [n] | [1, n] => n == 1 || n == n_out,
                    _ => false,
                };
                if !shape_ok {
                    return Err(node_err(
                        node,
                        format!("a bias of shape {:?} for {n_out} outputs", t.dims),
                    ));
                }
                (0..n_out)
                    .map(|o| beta * if v.len() == 1 { v[0] } else { v[o] })
                    .collect()
            }
            Some(_) => return Err(node_err(node, "the bias C must be a constant")),
        };
        self.linear(node, k, n_in, n_out, weights, bias)
    }

    /// `Add`, `Sub`, `Mul`, `Div` of the network's values and a constant.
    fn arithmetic(&mut self, node: &NodeProto) -> Result<Value, ImportError> {
        let a = self.input(node, 0)?;
        let b = self.input(node, 1)?;
        let (k, c, net_first) = match (&a, &b) {
            (Value::Net(k), Value::Const(c)) => (*k, c.clone(), true),
            (Value::Const(c), Value::Net(k)) => (*k, c.clone(), false),
            (Value::Net(_), Value::Net(_)) => {
                return Err(node_err(
                    node,
                    "combines two of the network's values (residual or gated connections are not supported)",
                ));
            }
            _ => {
                return Err(node_err(
                    node,
                    "only arithmetic between the network's values and a constant is supported",
                ));
            }
        };
        let v = floats_of(node, &c)?.to_vec();
        // skl2onnx's binary classifier: 1 - p, p the one-unit Sigmoid output.
        if node.op_type == "Sub"
            && !net_first
            && v == [1.0]
            && matches!(self.steps[k].op, StepOp::Act(Activation::Sigmoid))
            && self.steps[k].width == Some(1)
        {
            return Ok(Value::Complement(k));
        }
        let shape_ok = match c.dims[..] {
            [] => true,
            [n] | [1, n] => n >= 1,
            _ => false,
        };
        if !shape_ok {
            return Err(node_err(
                node,
                format!(
                    "a constant of shape {:?}; a scalar or a row expected",
                    c.dims
                ),
            ));
        }
        let c32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let exact = match (node.op_type.as_str(), net_first) {
            ("Add", _) => Some(ElemOp::Add(c32)),
            ("Sub", true) => Some(ElemOp::Sub(c32)),
            ("Sub", false) => Some(ElemOp::SubFrom(c32)),
            ("Mul", _) => Some(ElemOp::Mul(c32)),
            ("Div", true) => Some(ElemOp::Div(c32)),
            _ => None,
        };
        let one = vec![1.0];
        let zero = vec![0.0];
        let d = match (node.op_type.as_str(), net_first) {
            ("Add", _) => Diag {
                offset: zero.clone(),
                scale: one,
                shift: v,
            },
            ("Sub", true) => Diag {
                offset: v,
                scale: one,
                shift: zero,
            },
            ("Sub", false) => Diag {
                offset: zero,
                scale: vec![-1.0],
                shift: v,
            },
            ("Mul", _) => Diag {
                offset: zero.clone(),
                scale: v,
                shift: zero,
            },
            ("Div", true) => {
                if v.contains(&0.0) {
                    return Err(node_err(node, "divides by zero"));
                }
                Diag {
                    offset: zero.clone(),
                    scale: v.iter().map(|d| 1.0 / d).collect(),
                    shift: zero,
                }
            }
            _ => {
                return Err(node_err(
                    node,
                    "divides a constant by the network's values (not affine)",
                ));
            }
        };
        self.diag(node, k, d, exact)
    }

    /// An element-wise affine step after step `k`, checking the vectors' lengths.
    fn diag(
        &mut self,
        node: &NodeProto,
        k: usize,
        d: Diag,
        exact: Option<ElemOp>,
    ) -> Result<Value, ImportError> {
        let mut width = self.steps[k].width;
        if let Some(n) = d.width() {
            if width.is_some_and(|w| w != n) {
                return Err(node_err(
                    node,
                    format!(
                        "a vector of {n} values applied to {} columns",
                        width.unwrap_or(0)
                    ),
                ));
            }
            width = Some(n);
        }
        if let Some(n) = width {
            if n > MAX_FEATURES {
                return Err(too_large("the number of input features", n, MAX_FEATURES));
            }
            for v in [&d.offset, &d.scale, &d.shift] {
                if v.len() != 1 && v.len() != n {
                    return Err(node_err(
                        node,
                        format!("vectors of {} values for {n} columns", v.len()),
                    ));
                }
            }
        }
        if d.offset
            .iter()
            .chain(&d.scale)
            .chain(&d.shift)
            .any(|v| !v.is_finite())
        {
            return Err(node_err(node, "a constant is not finite"));
        }
        let v = self.push(k, StepOp::Diag(Rc::new(d)), width);
        self.steps.last_mut().expect("pushed").exact = exact;
        Ok(v)
    }

    /// `BatchNormalization` (inference) right after a dense layer, as an element-wise affine.
    fn batch_norm(&mut self, node: &NodeProto, attrs: &Attrs) -> Result<Value, ImportError> {
        let k = self.net(node, 0)?;
        // Foldable only after a dense layer (possibly after its bias Add and other affines).
        let mut j = k;
        while let StepOp::Diag(_) = self.steps[j].op {
            j = self.steps[j].parent.expect("a diagonal step has a parent");
        }
        if !matches!(self.steps[j].op, StepOp::Linear(_)) {
            return Err(unsupported_op(node));
        }
        if attrs.int("training_mode")?.unwrap_or(0) != 0 {
            return Err(unsupported_attr(node, "training_mode", 1));
        }
        if attrs.int("spatial")?.unwrap_or(1) != 1 {
            return Err(unsupported_attr(node, "spatial", 0));
        }
        if node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(node_err(
                node,
                "training outputs (running statistics) are not supported",
            ));
        }
        let eps = attrs.float("epsilon")?.unwrap_or(1e-5) as f64;
        let width = self.steps[k].width.expect("a dense layer's width is known");
        let mut vectors = Vec::new();
        for (i, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
            let t = self.constant(node, i)?;
            let v = floats_of(node, &t)?;
            if v.len() != width {
                return Err(node_err(
                    node,
                    format!("{what} has {} values for {width} channels", v.len()),
                ));
            }
            vectors.push(v.to_vec());
        }
        let [gamma, beta, mean, var] = <[Vec<f64>; 4]>::try_from(vectors).expect("four vectors");
        let mut scale = Vec::with_capacity(width);
        for (g, v) in gamma.iter().zip(&var) {
            let denom = (v + eps).sqrt();
            if denom.is_nan() || denom <= 0.0 {
                return Err(node_err(node, "a variance plus epsilon is not positive"));
            }
            scale.push(g / denom);
        }
        let d = Diag {
            offset: mean,
            scale,
            shift: beta,
        };
        self.diag(node, k, d, None)
    }

    /// The network the graph's outputs read, as an [`Mlp`].
    pub(crate) fn into_mlp(self, producer: &str) -> Result<Mlp, ImportError> {
        let mut end: Option<usize> = None;
        let mut labels: Option<(usize, Rc<Vec<String>>)> = None;
        for o in &self.graph.output {
            let v = self.values.get(o.name.as_str()).ok_or_else(|| {
                graph_err(format!(
                    "the output {:?} is not produced by any node",
                    o.name
                ))
            })?;
            match v {
                Value::Net(k) | Value::BinaryProbs(k) => {
                    // Prefer the probabilities (after Softmax) when both them and the logits
                    // are outputs.
                    if end.is_none_or(|e| self.base(e) == e) {
                        end = Some(*k);
                    }
                }
                Value::Labels(k, l) => {
                    if labels.as_ref().is_some_and(|(_, old)| old != l) {
                        return Err(graph_err("two outputs with different class labels"));
                    }
                    labels = Some((*k, l.clone()));
                }
                _ => {
                    return Err(graph_err(format!(
                        "the output {:?} is neither the network's output nor class labels",
                        o.name
                    )));
                }
            }
        }
        let end = match (end, &labels) {
            (Some(e), _) => e,
            (None, Some((k, _))) => *k,
            (None, None) => return Err(ImportError::NoModel),
        };
        let outputs: Vec<usize> = self
            .graph
            .output
            .iter()
            .filter_map(|o| match self.values.get(o.name.as_str()) {
                Some(Value::Net(k) | Value::BinaryProbs(k) | Value::Labels(k, _)) => Some(*k),
                _ => None,
            })
            .collect();
        if outputs.iter().any(|&k| self.base(k) != self.base(end)) {
            return Err(graph_err("the outputs are computed by different networks"));
        }
        // The chain of steps from the input to the output.
        let mut chain = Vec::new();
        let mut k = Some(end);
        while let Some(i) = k {
            chain.push(i);
            k = self.steps[i].parent;
        }
        chain.reverse();
        let (scaler, layers, post) = compose(&self.steps, &chain)?;
        let n_outputs = layers.last().expect("at least one layer").outputs;
        let task = match labels {
            Some((_, labels)) => {
                let labels = labels.as_ref().clone();
                if labels.len() < 2 {
                    return Err(graph_err("a classifier needs at least two classes"));
                }
                let binary = n_outputs == 1 && labels.len() == 2 && post == PostTransform::Logistic;
                if n_outputs != labels.len() && !binary {
                    return Err(graph_err(format!(
                        "{} class labels for an output of {n_outputs} columns{}",
                        labels.len(),
                        if n_outputs == 1 {
                            " (a binary classifier with one output needs a Sigmoid)"
                        } else {
                            ""
                        }
                    )));
                }
                OnnxTask::Classifier { labels }
            }
            None if producer.starts_with("skl2onnx") || n_outputs == 1 => {
                OnnxTask::Regressor { targets: n_outputs }
            }
            None => OnnxTask::Classifier {
                labels: (0..n_outputs).map(|i| i.to_string()).collect(),
            },
        };
        Ok(Mlp {
            task,
            n_features: layers[0].inputs,
            scaler,
            layers,
            post,
        })
    }

    /// Step `k`, or the step before it when `k` is a `Softmax` (the labels may be read from the
    /// logits or from the probabilities).
    fn base(&self, k: usize) -> usize {
        match self.steps[k].op {
            StepOp::Softmax { .. } => self.steps[k].parent.unwrap_or(k),
            _ => k,
        }
    }
}

fn check_column_axis(
    node: &NodeProto,
    attrs: &Attrs,
    default: Option<i64>,
) -> Result<(), ImportError> {
    match attrs.int("axis")?.or(default) {
        Some(1) | Some(-1) => Ok(()),
        None => Err(node_err(node, "the axis attribute is missing")),
        Some(other) => Err(unsupported_attr(node, "axis", other)),
    }
}

/// A `Constant` node's value.
fn constant_attr(node: &NodeProto, attrs: &Attrs) -> Result<Tensor, ImportError> {
    let [a] = node.attribute.as_slice() else {
        return Err(node_err(
            node,
            "a Constant needs exactly one value attribute",
        ));
    };
    match (a.name.as_str(), a.r#type) {
        ("value", attr_type::TENSOR) => tensor(
            a.t.as_ref()
                .ok_or_else(|| node_err(node, "value holds no tensor"))?,
        ),
        ("value_float", _) => Ok(Tensor {
            dims: vec![],
            data: Data::Float(vec![attrs.float("value_float")?.unwrap_or(0.0) as f64]),
        }),
        ("value_floats", _) => {
            let v = attrs.floats("value_floats")?;
            Ok(Tensor {
                dims: vec![v.len()],
                data: Data::Float(v.iter().map(|&x| x as f64).collect()),
            })
        }
        ("value_int", _) => Ok(Tensor {
            dims: vec![],
            data: Data::Int(vec![attrs.int("value_int")?.unwrap_or(0)]),
        }),
        ("value_ints", _) => {
            let v = attrs.ints("value_ints")?;
            Ok(Tensor {
                dims: vec![v.len()],
                data: Data::Int(v),
            })
        }
        (name, _) => Err(unsupported_attr(node, name, "(this kind of constant)")),
    }
}

/// A layer while composing: its affine map and the activation that closed it.
struct Open {
    affine: Affine,
    act: Option<Activation>,
}

/// Groups the chain's steps into the scaler, the dense layers and the output transform.
fn compose(
    steps: &[Step],
    chain: &[usize],
) -> Result<(Option<Scaler>, Vec<Dense>, PostTransform), ImportError> {
    let mut pre: Option<Diag> = None;
    let mut layers: Vec<Open> = Vec::new();
    // An element-wise affine after an activation, waiting for the next dense layer.
    let mut pending: Option<Diag> = None;
    // Some(log) once a Softmax (or LogSoftmax) ends the network.
    let mut softmax: Option<bool> = None;
    let mut work = 0usize;
    for &i in chain {
        let step = &steps[i];
        if softmax.is_some() && !matches!(step.op, StepOp::Input) {
            return Err(graph_err(
                "Softmax must be the last operation of the network",
            ));
        }
        match &step.op {
            StepOp::Input => {}
            StepOp::Diag(d) => {
                let width = step.width.unwrap_or(1);
                match layers.last_mut() {
                    None => pre = Some(pre.map_or((**d).clone(), |p| p.then(d, width))),
                    Some(l) if l.act.is_none() => l.affine.then_diag(d),
                    Some(_) => {
                        pending = Some(pending.map_or((**d).clone(), |p| p.then(d, width)));
                    }
                }
            }
            StepOp::Linear(a) => {
                let mut a = (**a).clone();
                if let Some(d) = pending.take() {
                    a.after_input(&d.expand(a.inputs));
                }
                match layers.last_mut() {
                    Some(l) if l.act.is_none() => {
                        work = work.saturating_add(
                            a.outputs
                                .saturating_mul(l.affine.outputs)
                                .saturating_mul(l.affine.inputs),
                        );
                        if work > MAX_COMPOSE_WORK {
                            return Err(too_large(
                                "the work to compose dense layers with no activation between \
                                 them (multiply-adds)",
                                work,
                                MAX_COMPOSE_WORK,
                            ));
                        }
                        l.affine = l.affine.then_affine(&a);
                    }
                    _ => layers.push(Open {
                        affine: a,
                        act: None,
                    }),
                }
            }
            StepOp::Act(act) => match layers.last_mut() {
                None => {
                    return Err(graph_err(format!(
                        "a {} activation before the first dense layer",
                        act.name()
                    )));
                }
                Some(l) if l.act.is_some() || pending.is_some() => {
                    return Err(graph_err(format!(
                        "a {} activation follows another activation with no dense layer between",
                        act.name()
                    )));
                }
                Some(l) => l.act = Some(*act),
            },
            StepOp::Softmax { log } => match layers.last() {
                Some(l) if l.act.is_none() => softmax = Some(*log),
                _ => {
                    return Err(graph_err(
                        "Softmax is supported only right after the output layer",
                    ));
                }
            },
        }
    }
    if layers.is_empty() {
        return Err(ImportError::NoModel);
    }
    if pending.is_some() {
        return Err(graph_err(
            "an element-wise operation after the last activation (it must be followed by a dense layer)",
        ));
    }
    let last = layers.last_mut().expect("not empty");
    let post = match (softmax, last.act) {
        (Some(false), _) => PostTransform::Softmax,
        (Some(true), _) => PostTransform::LogSoftmax,
        (None, None) => PostTransform::None,
        (None, Some(Activation::Sigmoid)) if last.affine.outputs == 1 => {
            last.act = None;
            PostTransform::Logistic
        }
        (None, Some(Activation::Sigmoid)) => {
            return Err(graph_err(format!(
                "a Sigmoid on an output of {} columns (multi-label) is not supported",
                last.affine.outputs
            )));
        }
        (None, Some(act)) => {
            return Err(graph_err(format!(
                "the output layer ends in {}; after the last dense layer only Softmax, a \
                 one-unit Sigmoid or nothing is supported",
                act.name()
            )));
        }
    };
    let hidden = layers.len() - 1;
    if hidden > MAX_HIDDEN_LAYERS {
        return Err(too_large(
            "the number of hidden layers",
            hidden,
            MAX_HIDDEN_LAYERS,
        ));
    }
    let n_features = layers[0].affine.inputs;
    if n_features > MAX_FEATURES {
        return Err(too_large(
            "the number of input features",
            n_features,
            MAX_FEATURES,
        ));
    }
    // The preprocessing: (x - offset) * scale when it has that form, else folded into the
    // first layer.
    let mut scaler = None;
    if let Some(d) = pre.map(|d| d.expand(n_features)) {
        let identity = d
            .offset
            .iter()
            .zip(&d.scale)
            .zip(&d.shift)
            .all(|((&o, &s), &c)| o == 0.0 && s == 1.0 && c == 0.0);
        if identity {
            // Nothing to do (an Identity-like preprocessing).
        } else if d.shift.iter().all(|&c| c == 0.0) {
            scaler = Some(Scaler {
                offset: d.offset.iter().map(|&v| v as f32).collect(),
                scale: d.scale.iter().map(|&v| v as f32).collect(),
            });
        } else if d.scale.iter().all(|&s| s != 0.0) {
            scaler = Some(Scaler {
                offset: d
                    .offset
                    .iter()
                    .zip(&d.scale)
                    .zip(&d.shift)
                    .map(|((o, s), c)| (o - c / s) as f32)
                    .collect(),
                scale: d.scale.iter().map(|&v| v as f32).collect(),
            });
        } else {
            layers[0].affine.after_input(&d);
        }
    }
    let dense = layers
        .into_iter()
        .map(|l| {
            let a = l.affine;
            if a.weights
                .iter()
                .chain(&a.bias)
                .any(|v| !v.is_finite() || v.abs() > f32::MAX as f64)
            {
                return Err(graph_err("a composed weight overflows f32"));
            }
            Ok(Dense {
                inputs: a.inputs,
                outputs: a.outputs,
                weights: a.weights.iter().map(|&v| v as f32).collect(),
                bias: a.bias.iter().map(|&v| v as f32).collect(),
                activation: l.act.unwrap_or(Activation::Identity),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((scaler, dense, post))
}
