//! The imported model in floating point, evaluated with ONNX Runtime's semantics (f32
//! comparisons and sums), so an import can be checked against the exporter's own outputs before
//! it is quantized.

use fhe_batch_core::model::argmax;
pub use fhe_batch_core::tree::PostTransform;
use fhe_batch_core::tree::transform;

/// A branch's test: the *true* child is taken when `x CMP threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Leq,
    Lt,
    Gte,
    Gt,
}

impl Cmp {
    pub fn holds(self, x: f32, t: f32) -> bool {
        match self {
            Cmp::Leq => x <= t,
            Cmp::Lt => x < t,
            Cmp::Gte => x >= t,
            Cmp::Gt => x > t,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Branch {
        feature: usize,
        threshold: f32,
        cmp: Cmp,
        /// Index (in the tree's node list) of the child taken when the test holds.
        yes: usize,
        no: usize,
        /// Where a missing (NaN) input goes.
        missing_yes: bool,
    },
    /// Contributions of this leaf: (score slot, weight).
    Leaf { weights: Vec<(usize, f32)> },
}

/// One tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf a record reaches.
    pub fn leaf(&self, x: &[f32]) -> &[(usize, f32)] {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                Node::Leaf { weights } => return weights,
                Node::Branch {
                    feature,
                    threshold,
                    cmp,
                    yes,
                    no,
                    missing_yes,
                } => {
                    let v = x[*feature];
                    let go_yes = if v.is_nan() {
                        *missing_yes
                    } else {
                        cmp.holds(v, *threshold)
                    };
                    i = if go_yes { *yes } else { *no };
                }
            }
        }
    }

    /// Longest root-to-leaf path, in branches.
    pub fn depth(&self) -> usize {
        fn walk(t: &Tree, i: usize) -> usize {
            match &t.nodes[i] {
                Node::Leaf { .. } => 0,
                Node::Branch { yes, no, .. } => 1 + walk(t, *yes).max(walk(t, *no)),
            }
        }
        walk(self, 0)
    }

    pub fn leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }
}

/// Classifier or regressor.
#[derive(Debug, Clone, PartialEq)]
pub enum OnnxTask {
    /// Class labels, in the model's order (integers are written in decimal).
    Classifier {
        labels: Vec<String>,
    },
    Regressor {
        targets: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    pub task: OnnxTask,
    pub n_features: usize,
    pub trees: Vec<Tree>,
    /// Score slots the leaves write (a binary classifier may use one: the positive class).
    pub n_scores: usize,
    pub base_values: Vec<f32>,
    pub post: PostTransform,
    /// Regressors: divide the sum by the number of trees (`aggregate_function = AVERAGE`).
    pub average: bool,
    /// Every leaf weight is >= 0 (decides ONNX Runtime's binary label rule).
    pub weights_positive: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub task: OnnxTask,
    pub n_features: usize,
    /// Per-feature affine operators in front of the model (a scaler), applied in f32 as ONNX
    /// Runtime applies them; the compiler folds them into the weights ([`Preprocess::affine`]).
    pub pre: Option<Preprocess>,
    /// One row of coefficients per class or target.
    pub coefficients: Vec<Vec<f32>>,
    pub intercepts: Vec<f32>,
    pub post: PostTransform,
}

/// An element-wise activation after a dense layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// `x` for `x >= 0`, `alpha * x` below (ONNX `LeakyRelu`, PyTorch `nn.LeakyReLU`).
    LeakyRelu(f32),
    Tanh,
    /// The logistic function `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Activation {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(alpha) => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => fhe_batch_core::tree::sigmoid(x),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

/// One fully connected layer: `activation(W x + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    /// Row-major, `outputs x inputs`: row `o` holds output `o`'s weights.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub activation: Activation,
}

impl Dense {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.weights
            .chunks_exact(self.inputs)
            .zip(&self.bias)
            .map(|(row, b)| {
                let z = row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b;
                self.activation.apply(z)
            })
            .collect()
    }
}

/// A multi-layer perceptron: an optional per-feature affine preprocessing (a scaler folded out
/// of the graph), dense layers, and the output transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub task: OnnxTask,
    pub n_features: usize,
    /// `x' = (x - offset) * scale` per feature before the first layer, when the graph has one.
    pub scaler: Option<Scaler>,
    /// Hidden layers then the output layer (whose activation is `Identity`: the output
    /// transform is [`Mlp::post`]).
    pub layers: Vec<Dense>,
    /// Softmax (multiclass), Logistic (binary with one output) or None (regression).
    pub post: PostTransform,
}

/// A per-feature affine map `x' = (x - offset) * scale` (ONNX `Scaler`, scikit-learn's
/// `StandardScaler` and `MinMaxScaler`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    pub offset: Vec<f32>,
    pub scale: Vec<f32>,
}

/// One element-wise operator on the features, with per-feature constants (one value: every
/// feature), as ONNX Runtime computes it in f32.
#[derive(Debug, Clone, PartialEq)]
pub enum ElemOp {
    /// ai.onnx.ml `Scaler`: `(x - offset) * scale`.
    Scaler(Scaler),
    /// `x + c`.
    Add(Vec<f32>),
    /// `x - c`.
    Sub(Vec<f32>),
    /// `c - x`.
    SubFrom(Vec<f32>),
    /// `x * c`.
    Mul(Vec<f32>),
    /// `x / c`.
    Div(Vec<f32>),
}

fn at(v: &[f32], j: usize) -> f32 {
    if v.len() == 1 { v[0] } else { v[j] }
}

impl ElemOp {
    /// Feature `j`'s value after the operator, in f32.
    pub fn apply(&self, j: usize, x: f32) -> f32 {
        match self {
            ElemOp::Scaler(s) => (x - at(&s.offset, j)) * at(&s.scale, j),
            ElemOp::Add(c) => x + at(c, j),
            ElemOp::Sub(c) => x - at(c, j),
            ElemOp::SubFrom(c) => at(c, j) - x,
            ElemOp::Mul(c) => x * at(c, j),
            ElemOp::Div(c) => x / at(c, j),
        }
    }

    /// Feature `j`'s operator as `x' = a x + b`, in real arithmetic.
    pub fn affine(&self, j: usize) -> (f64, f64) {
        let c = |v: &[f32]| at(v, j) as f64;
        match self {
            ElemOp::Scaler(s) => (c(&s.scale), -c(&s.offset) * c(&s.scale)),
            ElemOp::Add(v) => (1.0, c(v)),
            ElemOp::Sub(v) => (1.0, -c(v)),
            ElemOp::SubFrom(v) => (-1.0, c(v)),
            ElemOp::Mul(v) => (c(v), 0.0),
            ElemOp::Div(v) => (1.0 / c(v), 0.0),
        }
    }

    /// The ONNX operator it came from.
    pub fn op_type(&self) -> &'static str {
        match self {
            ElemOp::Scaler(_) => "Scaler",
            ElemOp::Add(_) => "Add",
            ElemOp::Sub(_) | ElemOp::SubFrom(_) => "Sub",
            ElemOp::Mul(_) => "Mul",
            ElemOp::Div(_) => "Div",
        }
    }
}

/// Per-feature affine preprocessing in front of a linear model or a tree ensemble: the chain
/// of element-wise operators between the graph's input and the model operator (skl2onnx writes
/// `StandardScaler` as a `Scaler`, `MinMaxScaler` as `Mul` then `Add`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub ops: Vec<ElemOp>,
}

impl Preprocess {
    /// Feature `j` after every operator, in f32 as ONNX Runtime computes it (each operator
    /// rounds to f32, so the map is monotone in `x`).
    pub fn feature(&self, j: usize, x: f32) -> f32 {
        self.ops.iter().fold(x, |v, op| op.apply(j, v))
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(j, &v)| self.feature(j, v))
            .collect()
    }

    /// Feature `j`'s whole chain as `x' = a x + b`, in real arithmetic (what a linear model's
    /// weights absorb).
    pub fn affine(&self, j: usize) -> (f64, f64) {
        self.ops.iter().fold((1.0, 0.0), |(a, b), op| {
            let (a2, b2) = op.affine(j);
            (a * a2, b * a2 + b2)
        })
    }

    /// The operators' names, in order ("Scaler", "Mul, Add").
    pub fn describe(&self) -> String {
        self.ops
            .iter()
            .map(ElemOp::op_type)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What a scikit-learn user would call it: skl2onnx writes `StandardScaler` (and
    /// `RobustScaler`, `MaxAbsScaler`) as one `Scaler`, `MinMaxScaler` as `Mul` then `Add`.
    pub fn likely_source(&self) -> &'static str {
        match self.ops.as_slice() {
            [ElemOp::Scaler(_)] => "StandardScaler",
            [ElemOp::Mul(_), ElemOp::Add(_)] => "MinMaxScaler",
            _ => "affine preprocessing",
        }
    }
}

impl Mlp {
    /// The output layer's values before the post-transform (logits, or predicted values).
    pub fn raw_scores(&self, x: &[f32]) -> Vec<f32> {
        let mut v: Vec<f32> = match &self.scaler {
            Some(s) => x
                .iter()
                .zip(s.offset.iter().zip(&s.scale))
                .map(|(x, (o, k))| (x - o) * k)
                .collect(),
            None => x.to_vec(),
        };
        for layer in &self.layers {
            v = layer.forward(&v);
        }
        v
    }

    /// The same network read as a regressor with one target per output column: for a graph
    /// that has no class labels and more than one output column, which the importer takes for a
    /// classifier with labels `"0"`..`"C-1"` (see [`crate::mlp`]). Regressors are returned as
    /// they are.
    pub fn as_regressor(mut self) -> Self {
        if let OnnxTask::Classifier { .. } = self.task {
            self.task = OnnxTask::Regressor {
                targets: self.layers.last().map_or(0, |l| l.outputs),
            };
        }
        self
    }

    /// Widths of the hidden layers.
    pub fn hidden(&self) -> Vec<usize> {
        self.layers[..self.layers.len().saturating_sub(1)]
            .iter()
            .map(|l| l.outputs)
            .collect()
    }

    fn predict(&self, x: &[f32]) -> FloatPrediction {
        self.finish(self.raw_scores(x))
    }

    /// Output-layer values to a prediction with ONNX Runtime's rules: a binary classifier with
    /// one output reports `[1 - p, p]`, a classifier's label is the argmax.
    pub fn finish(&self, mut z: Vec<f32>) -> FloatPrediction {
        match &self.task {
            OnnxTask::Regressor { .. } => {
                transform(self.post, &mut z);
                FloatPrediction {
                    label: None,
                    scores: z,
                }
            }
            OnnxTask::Classifier { labels } => {
                if z.len() == 1 && labels.len() == 2 {
                    let p = fhe_batch_core::tree::sigmoid(z[0]);
                    return FloatPrediction {
                        label: Some(labels[usize::from(z[0] > 0.0)].clone()),
                        scores: vec![1.0 - p, p],
                    };
                }
                let label = labels[argmax(&z)].clone();
                transform(self.post, &mut z);
                FloatPrediction {
                    label: Some(label),
                    scores: z,
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FloatModel {
    Linear(Linear),
    Trees(TreeEnsemble),
    Mlp(Mlp),
}

/// A prediction as ONNX Runtime reports it: the label (classifiers) and the probabilities or
/// predicted values.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatPrediction {
    pub label: Option<String>,
    pub scores: Vec<f32>,
}

impl FloatModel {
    pub fn n_features(&self) -> usize {
        match self {
            FloatModel::Linear(m) => m.n_features,
            FloatModel::Trees(m) => m.n_features,
            FloatModel::Mlp(m) => m.n_features,
        }
    }

    pub fn task(&self) -> &OnnxTask {
        match self {
            FloatModel::Linear(m) => &m.task,
            FloatModel::Trees(m) => &m.task,
            FloatModel::Mlp(m) => &m.task,
        }
    }

    /// Evaluates one record (`x.len() == n_features`).
    pub fn predict(&self, x: &[f32]) -> FloatPrediction {
        assert_eq!(x.len(), self.n_features(), "feature count");
        match self {
            FloatModel::Linear(m) => m.predict(x),
            FloatModel::Trees(m) => m.predict(x),
            FloatModel::Mlp(m) => m.predict(x),
        }
    }
}

impl Linear {
    fn predict(&self, x: &[f32]) -> FloatPrediction {
        let scaled;
        let x = match &self.pre {
            Some(p) => {
                scaled = p.apply(x);
                scaled.as_slice()
            }
            None => x,
        };
        let mut z: Vec<f32> = self
            .coefficients
            .iter()
            .zip(&self.intercepts)
            .map(|(w, b)| w.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect();
        match &self.task {
            OnnxTask::Regressor { .. } => {
                transform(self.post, &mut z);
                FloatPrediction {
                    label: None,
                    scores: z,
                }
            }
            OnnxTask::Classifier { labels } => {
                if z.len() == 1 && labels.len() == 2 {
                    z = vec![-z[0], z[0]];
                }
                let label = labels[argmax(&z)].clone();
                transform(self.post, &mut z);
                FloatPrediction {
                    label: Some(label),
                    scores: z,
                }
            }
        }
    }
}

impl TreeEnsemble {
    /// Raw per-slot sums over the trees (averaged when asked), before base values.
    pub fn raw_scores(&self, x: &[f32]) -> Vec<f32> {
        let mut s = vec![0f32; self.n_scores];
        for t in &self.trees {
            for &(slot, w) in t.leaf(x) {
                s[slot] += w;
            }
        }
        if self.average {
            let n = self.trees.len() as f32;
            s.iter_mut().for_each(|v| *v /= n);
        }
        s
    }

    fn predict(&self, x: &[f32]) -> FloatPrediction {
        self.finish(self.raw_scores(x))
    }

    /// Turns raw per-slot sums (as [`TreeEnsemble::raw_scores`] returns them) into the
    /// prediction: base values, the binary rule, the post-transform.
    pub fn finish(&self, s: Vec<f32>) -> FloatPrediction {
        let (label, scores) = self.readout().finish(s);
        FloatPrediction { label, scores }
    }

    /// The readout the client part of a compiled model carries.
    pub fn readout(&self) -> fhe_batch_core::tree::Readout {
        fhe_batch_core::tree::Readout {
            labels: match &self.task {
                OnnxTask::Classifier { labels } => labels.clone(),
                OnnxTask::Regressor { .. } => Vec::new(),
            },
            base_values: self.base_values.clone(),
            post: self.post,
            weights_positive: self.weights_positive,
        }
    }
}
