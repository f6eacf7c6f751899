//! From ONNX bytes to a [`FloatModel`]: the graph is checked to be one supported model operator
//! with only shape-preserving helpers around it, or a dense network ([`crate::mlp`]), and every
//! attribute is checked before use.

use crate::mlp::{MLP_OP_TYPE, Walk, is_dense_op};
use crate::model::{
    Cmp, ElemOp, FloatModel, FloatPrediction, Linear, Node, OnnxTask, PostTransform, Preprocess,
    Tree, TreeEnsemble,
};
use crate::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, attr_type, data_type};
use fhe_batch_core::model::{ClientPrefix, PrefixError};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// Largest ONNX file read (a 1,000-tree ensemble of depth 8 is a few MB).
pub const MAX_ONNX_BYTES: usize = 64 << 20;
/// Deepest tree accepted.
pub const MAX_TREE_DEPTH: usize = 32;

/// Why a model cannot be imported. Every message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("the ONNX file is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error(
        "unsupported ONNX operator {op_type} (domain {domain:?}, node {node:?}); supported: LinearClassifier, LinearRegressor, TreeEnsembleClassifier, TreeEnsembleRegressor, TreeEnsemble (ai.onnx.ml 5), with Cast, Identity, ZipMap and Normalizer(L1) around them (ArgMax and a Gather of labels after a TreeEnsemble), client-side preprocessing in front; or a dense network: MatMul+Add or Gemm layers, Relu, LeakyRelu, Tanh, Sigmoid, Softmax or LogSoftmax (last), BatchNormalization (right after a layer), Dropout, Identity, Cast, Reshape, Flatten, Scaler/Sub/Add/Mul/Div by constants, and skl2onnx's label operators (Concat, ArgMax, ArrayFeatureExtractor, ZipMap)"
    )]
    UnsupportedOperator {
        op_type: String,
        domain: String,
        node: String,
    },
    #[error(
        "unsupported preprocessing operator {op_type} (node {node:?}) in front of the model: {advice}; per-feature Scaler/Add/Sub/Mul/Div by constants (StandardScaler, MinMaxScaler, ...) are folded into the model"
    )]
    UnsupportedPreprocessing {
        op_type: String,
        node: String,
        advice: String,
    },
    #[error("unsupported value {value:?} of attribute {attr} of {op}")]
    UnsupportedAttribute {
        op: String,
        attr: String,
        value: String,
    },
    #[error("invalid {op}: {detail}")]
    Invalid { op: String, detail: String },
    #[error(
        "the graph holds no model operator (LinearClassifier, LinearRegressor, TreeEnsembleClassifier, TreeEnsembleRegressor, TreeEnsemble) and no dense layer (MatMul, Gemm) on its output's path"
    )]
    NoModel,
    #[error("the graph holds {0} model operators; one is supported")]
    SeveralModels(usize),
    #[error("the network is too large: {what} is {value}; at most {limit} are supported")]
    NetworkTooLarge {
        what: String,
        value: usize,
        limit: usize,
    },
}

/// An imported model and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub model: FloatModel,
    /// `producer_name producer_version` of the file (skl2onnx, OnnxMLTools, ...).
    pub producer: String,
    /// The model operator's type, or `"MLP"` for a dense network.
    pub op_type: String,
    /// What the importer folded into the model, one sentence each (a scaler in front, post
    /// operations on the scores), for the import report.
    pub folded: Vec<String>,
    /// The pipeline's preprocessing the client runs on each raw record (everything in front of
    /// the model when it is not affine per feature); the model's features are its outputs.
    pub prefix: Option<ClientPrefix>,
    /// The raw columns' names when the graph declares one input per column (a data frame's
    /// export): the CSV's feature columns must be these, in this order.
    pub columns: Option<Vec<String>>,
}

impl Imported {
    /// Raw columns per record: the prefix's inputs, or the model's features.
    pub fn raw_features(&self) -> usize {
        self.prefix
            .as_ref()
            .map_or_else(|| self.model.n_features(), |p| p.inputs)
    }

    /// The float model's prediction on a raw record (the prefix applied first), as ONNX
    /// Runtime computes it.
    pub fn predict_raw(&self, record: &[f64]) -> Result<FloatPrediction, PrefixError> {
        let x: Vec<f32> = match &self.prefix {
            Some(p) => p.apply(record)?.iter().map(|&v| v as f32).collect(),
            None => record.iter().map(|&v| v as f32).collect(),
        };
        Ok(self.model.predict(&x))
    }
}

const MODEL_OPS: [&str; 5] = [
    "LinearClassifier",
    "LinearRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    // ai.onnx.ml opset 5: one operator for every ensemble, its outputs the raw scores.
    "TreeEnsemble",
];

/// Reads an ONNX file.
pub fn import_onnx(bytes: &[u8]) -> Result<Imported, ImportError> {
    if bytes.len() > MAX_ONNX_BYTES {
        return Err(ImportError::TooLarge {
            size: bytes.len(),
            limit: MAX_ONNX_BYTES,
        });
    }
    let proto = ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    let graph = proto.graph.as_ref().ok_or(ImportError::NoGraph)?;
    // CatBoost's producer_version is a multi-line build banner: keep its first line, and at
    // most 80 characters of an untrusted file's text.
    let version = proto.producer_version.lines().next().unwrap_or("");
    let producer: String = format!("{} {}", proto.producer_name, version)
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    let columns = crate::prefix::column_names(graph)?;
    let (prefix, split) = client_prefix(graph)?;
    let graph = split.as_ref().unwrap_or(graph);
    let has_model_op = graph
        .node
        .iter()
        .any(|n| MODEL_OPS.contains(&n.op_type.as_str()) && n.domain == "ai.onnx.ml");
    if !has_model_op {
        // No classical model operator: a dense network, or refused naming the first operator
        // a dense network cannot hold.
        if let Some(node) = graph.node.iter().find(|n| !is_dense_op(n)) {
            return Err(ImportError::UnsupportedOperator {
                op_type: node.op_type.clone(),
                domain: node.domain.clone(),
                node: node.name.clone(),
            });
        }
        let mlp = Walk::new(graph)?.into_mlp(&proto.producer_name)?;
        let folded = mlp
            .scaler
            .as_ref()
            .map(|_| "scaler in front of the network: applied by the client's quantizers (folded into the first layer)".to_string())
            .into_iter()
            .collect();
        return Ok(Imported {
            model: FloatModel::Mlp(mlp),
            producer,
            op_type: MLP_OP_TYPE.to_string(),
            folded,
            prefix,
            columns,
        });
    }
    let main: Vec<&NodeProto> = graph
        .node
        .iter()
        .filter(|n| MODEL_OPS.contains(&n.op_type.as_str()) && n.domain == "ai.onnx.ml")
        .collect();
    let node = match main.as_slice() {
        [] => return Err(ImportError::NoModel),
        [one] => *one,
        many => return Err(ImportError::SeveralModels(many.len())),
    };
    let upstream = upstream_of(graph, node);
    let pre = preprocess(graph, node, &upstream)?;
    // After the model: label and score plumbing, and element-wise operations on the scores.
    let mut scores: HashSet<&str> = HashSet::new();
    let classifier = node.op_type.ends_with("Classifier");
    if let Some(s) = node.output.get(usize::from(classifier)) {
        scores.insert(s.as_str());
    }
    let mut post_ops: Vec<(ElemOp, String)> = Vec::new();
    // The opset-5 TreeEnsemble outputs scores only: a classifier is an ArgMax over them (after
    // an optional Softmax), its index optionally mapped to labels by a Gather from a constant.
    let v5 = node.op_type == "TreeEnsemble";
    let mut argmax: Option<&str> = None;
    let mut labels: Option<Vec<String>> = None;
    let mut softmax = false;
    for (i, n) in graph.node.iter().enumerate() {
        if std::ptr::eq(n, node) || upstream.contains(&i) {
            continue;
        }
        let on_scores = n.input.first().is_some_and(|x| scores.contains(x.as_str()));
        let on_argmax = argmax.is_some_and(|a| n.input.iter().any(|x| x == a));
        match n.op_type.as_str() {
            "ArgMax" | "Softmax" if v5 && on_scores && n.domain.is_empty() => {
                let axis = Attrs::new(n)?.int("axis")?;
                if !matches!(axis, Some(1) | Some(-1)) {
                    return Err(unsupported(
                        n,
                        "axis",
                        &format!("{axis:?} (the scores' axis is 1)"),
                    ));
                }
                if n.op_type == "Softmax" {
                    softmax = true;
                } else if argmax.is_some() {
                    return Err(invalid(n, "a second ArgMax over the scores"));
                } else {
                    // Its output is the class index, not scores.
                    argmax = n.output.first().map(String::as_str);
                    continue;
                }
            }
            "Gather" | "ArrayFeatureExtractor" if on_argmax && labels.is_none() => {
                labels = Some(class_labels(graph, n)?);
                continue;
            }
            "Cast" | "Identity" | "Reshape" if n.domain.is_empty() => {
                if n.op_type == "Cast"
                    && on_scores
                    && Attrs::new(n)?.int("to")? != Some(data_type::FLOAT as i64)
                {
                    return Err(unsupported(n, "to", "a type other than float"));
                }
                if n.op_type == "Reshape" && on_scores {
                    check_row_reshape(graph, n)?;
                }
            }
            "ZipMap" if n.domain == "ai.onnx.ml" => {}
            "Normalizer" if n.domain == "ai.onnx.ml" => {
                let norm = Attrs::new(n)?.string("norm")?.unwrap_or_default();
                if norm != "L1" {
                    return Err(unsupported(n, "norm", &norm));
                }
            }
            "Add" | "Sub" | "Mul" | "Div" if n.domain.is_empty() => {
                post_ops.push((score_op(graph, n, &scores)?, n.name.clone()));
            }
            _ => {
                return Err(ImportError::UnsupportedOperator {
                    op_type: n.op_type.clone(),
                    domain: n.domain.clone(),
                    node: n.name.clone(),
                });
            }
        }
        if n.input.iter().any(|x| scores.contains(x.as_str())) {
            for o in &n.output {
                scores.insert(o.as_str());
            }
        }
    }
    let declared = graph.input.first().and_then(|i| {
        let shape = i.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
        shape.dim.get(1)?.dim_value.filter(|&d| d > 0)
    });
    let attrs = Attrs::new(node)?;
    let mut folded = Vec::new();
    let mut model = match node.op_type.as_str() {
        "LinearClassifier" | "LinearRegressor" => {
            let mut l = linear(node, &attrs, declared)?;
            if let Some(p) = pre {
                check_widths(node, &p, l.n_features)?;
                folded.push(format!(
                    "{} ({}) folded into the weights",
                    p.likely_source(),
                    p.describe()
                ));
                l.pre = Some(p);
            }
            FloatModel::Linear(l)
        }
        _ => {
            let mut e = if node.op_type == "TreeEnsemble" {
                trees_v5(node, &attrs, declared)?
            } else {
                trees(node, &attrs, declared)?
            };
            if let Some(p) = pre {
                check_widths(node, &p, e.n_features)?;
                let pruned = fold_thresholds(&mut e, &p);
                folded.push(format!(
                    "{} ({}) folded into the thresholds: each is ONNX Runtime's exact f32 \
                     boundary on the raw feature{}",
                    p.likely_source(),
                    p.describe(),
                    if pruned > 0 {
                        format!(", {pruned} constant branches resolved")
                    } else {
                        String::new()
                    }
                ));
            }
            FloatModel::Trees(e)
        }
    };
    for (op, name) in post_ops {
        folded.push(fold_post_op(&mut model, &op, &name)?);
    }
    if argmax.is_some() || softmax {
        folded.push(read_as_classifier(
            &mut model,
            node,
            argmax.is_some(),
            softmax,
            labels,
        )?);
    }
    Ok(Imported {
        model,
        producer,
        op_type: node.op_type.clone(),
        folded,
        prefix,
        columns,
    })
}

/// An opset-5 `TreeEnsemble` followed by an `ArgMax` over its scores: a classifier whose labels
/// are the class indices, or the constant a `Gather` maps them to.
fn read_as_classifier(
    model: &mut FloatModel,
    node: &NodeProto,
    argmax: bool,
    softmax: bool,
    labels: Option<Vec<String>>,
) -> Result<String, ImportError> {
    let FloatModel::Trees(e) = model else {
        return Err(invalid(
            node,
            "an ArgMax after a model that is not a tree ensemble",
        ));
    };
    let targets = match e.task {
        OnnxTask::Regressor { targets } if argmax && targets >= 2 => targets,
        _ if !argmax => {
            return Err(invalid(
                node,
                "a Softmax on its scores is supported only before an ArgMax (a classifier)",
            ));
        }
        _ => return Err(invalid(node, "an ArgMax over fewer than two scores")),
    };
    if softmax && e.post != PostTransform::None {
        return Err(invalid(
            node,
            "a Softmax after its own post_transform is not supported",
        ));
    }
    let labels = labels.unwrap_or_else(|| (0..targets).map(|c| c.to_string()).collect());
    if labels.len() != targets {
        return Err(invalid(
            node,
            format!("{} class labels for {targets} scores", labels.len()),
        ));
    }
    let said = format!(
        "ArgMax over the TreeEnsemble's {targets} scores{}: read as a classifier (labels {})",
        if softmax { " (after a Softmax)" } else { "" },
        labels.join(", ")
    );
    e.task = OnnxTask::Classifier { labels };
    if softmax {
        e.post = PostTransform::Softmax;
    }
    Ok(said)
}

/// The labels a `Gather` / `ArrayFeatureExtractor` maps class indices to: a constant list of
/// integers or strings.
fn class_labels(graph: &GraphProto, n: &NodeProto) -> Result<Vec<String>, ImportError> {
    if n.op_type == "Gather" && Attrs::new(n)?.int("axis")?.unwrap_or(0) != 0 {
        return Err(unsupported(n, "axis", "other than 0 (the labels)"));
    }
    let t = n
        .input
        .first()
        .and_then(|name| graph.initializer.iter().find(|t| &t.name == name))
        .ok_or_else(|| invalid(n, "the class labels are not a constant"))?;
    if t.data_type == data_type::STRING {
        return t
            .string_data
            .iter()
            .map(|s| String::from_utf8(s.clone()).map_err(|_| invalid(n, "a label is not UTF-8")))
            .collect();
    }
    crate::prefix::ints(t)
        .map(|v| v.iter().map(i64::to_string).collect())
        .ok_or_else(|| invalid(n, "the class labels are neither integers nor strings"))
}

/// Splits off the preprocessing in front of the model (a classical model operator, or a
/// network's first dense layer) when it is not affine per feature: it becomes a client-side
/// prefix, and the rest of the graph reads the prefix's output. Affine preprocessing alone
/// stays in the graph, to be folded into the model.
fn client_prefix(
    graph: &GraphProto,
) -> Result<(Option<ClientPrefix>, Option<GraphProto>), ImportError> {
    let classical = graph
        .node
        .iter()
        .find(|n| MODEL_OPS.contains(&n.op_type.as_str()) && n.domain == "ai.onnx.ml");
    let entry = classical.or_else(|| {
        graph
            .node
            .iter()
            .find(|n| matches!(n.op_type.as_str(), "MatMul" | "Gemm") && n.domain.is_empty())
    });
    let Some(model) = entry else {
        return Ok((None, None));
    };
    let up = upstream_of(graph, model);
    if up.iter().all(|&i| is_affine_prefix_op(&graph.node[i])) {
        return Ok((None, None));
    }
    let mut up_sorted: Vec<usize> = up.iter().copied().collect();
    up_sorted.sort_unstable();
    if let Some(&i) = up_sorted
        .iter()
        .find(|&&i| !crate::prefix::is_prefix_op(&graph.node[i]))
    {
        // A network's other layers (a convolution in front) are named by the network walker.
        if classical.is_none() {
            return Ok((None, None));
        }
        let n = &graph.node[i];
        return Err(ImportError::UnsupportedPreprocessing {
            op_type: n.op_type.clone(),
            node: n.name.clone(),
            advice: preprocessing_advice(&n.op_type),
        });
    }
    let cut = model
        .input
        .first()
        .ok_or_else(|| invalid(model, "the model operator has no input"))?;
    let (p, rest) = crate::prefix::split(graph, &up, cut)?;
    Ok((Some(p), Some(rest)))
}

/// Indices of the nodes the model operator's inputs are computed by (its preprocessing).
fn upstream_of(graph: &GraphProto, model: &NodeProto) -> HashSet<usize> {
    let mut needed: HashSet<&str> = model.input.iter().map(String::as_str).collect();
    let mut out = HashSet::new();
    for (i, n) in graph.node.iter().enumerate().rev() {
        if std::ptr::eq(n, model) {
            continue;
        }
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            out.insert(i);
            needed.extend(n.input.iter().map(String::as_str));
        }
    }
    out
}

/// Operators that may come before a classical model: per-feature affine ones and helpers.
fn is_affine_prefix_op(n: &NodeProto) -> bool {
    match n.op_type.as_str() {
        "Scaler" => n.domain == "ai.onnx.ml",
        "Add" | "Sub" | "Mul" | "Div" | "Identity" | "Cast" | "Reshape" | "Flatten"
        | "Constant" => n.domain.is_empty() || n.domain == "ai.onnx",
        _ => false,
    }
}

/// What to do instead of a preprocessing operator neither folded nor run by the client.
fn preprocessing_advice(op: &str) -> String {
    format!(
        "the client-side preprocessing runs Imputer, Scaler, Normalizer, Binarizer, \
         OneHotEncoder (integer categories), LabelEncoder (numbers), ArrayFeatureExtractor, \
         FeatureVectorizer, Gather, Concat, Cast, Reshape and arithmetic by constants; apply the \
         {op} to the records before encrypting and export the model without it"
    )
}

/// The preprocessing in front of the model operator, read by the dense-network walker.
fn preprocess(
    graph: &GraphProto,
    model: &NodeProto,
    prefix: &HashSet<usize>,
) -> Result<Option<Preprocess>, ImportError> {
    if prefix.is_empty() {
        return Ok(None);
    }
    // Anything not affine per feature was split off into a client-side prefix (or refused)
    // by client_prefix before the model was read.
    debug_assert!(prefix.iter().all(|&i| is_affine_prefix_op(&graph.node[i])));
    let mut walk = Walk::start(graph)?;
    for (i, n) in graph.node.iter().enumerate() {
        if prefix.contains(&i) {
            walk.node(n)?;
        }
    }
    let input = model
        .input
        .first()
        .ok_or_else(|| invalid(model, "the model operator has no input"))?;
    walk.preprocess(input)
}

fn check_widths(model: &NodeProto, p: &Preprocess, n_features: usize) -> Result<(), ImportError> {
    for op in &p.ops {
        let n = match op {
            ElemOp::Scaler(s) => s.offset.len().max(s.scale.len()),
            ElemOp::Add(v)
            | ElemOp::Sub(v)
            | ElemOp::SubFrom(v)
            | ElemOp::Mul(v)
            | ElemOp::Div(v) => v.len(),
        };
        let ok = match op {
            ElemOp::Scaler(s) => [s.offset.len(), s.scale.len()]
                .iter()
                .all(|&l| l == 1 || l == n_features),
            _ => n == 1 || n == n_features,
        };
        if !ok {
            return Err(invalid(
                model,
                format!(
                    "a {} in front of it has {n} values for {n_features} features",
                    op.op_type()
                ),
            ));
        }
    }
    Ok(())
}

/// A float constant input of a node (an initializer), as f32.
fn constant_floats(graph: &GraphProto, name: &str) -> Option<Vec<f32>> {
    crate::prefix::floats(graph.initializer.iter().find(|t| t.name == name)?)
}

/// `Add`/`Sub`/`Mul`/`Div` of the model's scores and a constant scalar or row.
fn score_op(
    graph: &GraphProto,
    n: &NodeProto,
    scores: &HashSet<&str>,
) -> Result<ElemOp, ImportError> {
    let [a, b] = n.input.as_slice() else {
        return Err(invalid(n, "expects two inputs"));
    };
    let (c, scores_first) = match (scores.contains(a.as_str()), scores.contains(b.as_str())) {
        (true, false) => (b, true),
        (false, true) => (a, false),
        _ => {
            return Err(invalid(
                n,
                "after the model operator, only arithmetic between its scores and a constant is supported",
            ));
        }
    };
    let v = constant_floats(graph, c)
        .filter(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
        .ok_or_else(|| {
            invalid(
                n,
                format!("{c:?} is not a finite float constant (an initializer)"),
            )
        })?;
    Ok(match (n.op_type.as_str(), scores_first) {
        ("Add", _) => ElemOp::Add(v),
        ("Sub", true) => ElemOp::Sub(v),
        ("Sub", false) => ElemOp::SubFrom(v),
        ("Mul", _) => ElemOp::Mul(v),
        ("Div", true) if !v.contains(&0.0) => ElemOp::Div(v),
        ("Div", true) => return Err(invalid(n, "divides by zero")),
        _ => return Err(invalid(n, "divides a constant by the scores (not affine)")),
    })
}

/// A `Reshape` of the scores to `[-1 or 0, width]` or `[-1]` (one target).
fn check_row_reshape(graph: &GraphProto, n: &NodeProto) -> Result<(), ImportError> {
    let shape = n
        .input
        .get(1)
        .and_then(|s| graph.initializer.iter().find(|t| &t.name == s))
        .and_then(crate::prefix::ints)
        .unwrap_or_default();
    match shape.as_slice() {
        [-1] | [-1, _] | [0, _] => Ok(()),
        other => Err(invalid(
            n,
            format!("reshapes the scores to {other:?}; only [-1, n] is supported"),
        )),
    }
}

/// Folds an element-wise operation on the scores into the model: an identity (multiplying by
/// 1, adding 0) is dropped; a regressor without a post-transform takes any affine map into its
/// leaf values and base values, or its coefficients and intercepts.
fn fold_post_op(model: &mut FloatModel, op: &ElemOp, name: &str) -> Result<String, ImportError> {
    let n_scores = match model {
        FloatModel::Trees(e) => e.n_scores,
        FloatModel::Linear(l) => l.intercepts.len(),
        FloatModel::Mlp(_) => unreachable!("networks are read by the dense walker"),
    };
    let width = match op {
        ElemOp::Scaler(_) => unreachable!("not an operation on scores"),
        ElemOp::Add(v) | ElemOp::Sub(v) | ElemOp::SubFrom(v) | ElemOp::Mul(v) | ElemOp::Div(v) => {
            v.len()
        }
    };
    let err = |detail: String| ImportError::Invalid {
        op: format!("{} (node {name:?})", op.op_type()),
        detail,
    };
    if width != 1 && width != n_scores {
        return Err(err(format!("{width} constants for {n_scores} scores")));
    }
    let maps: Vec<(f64, f64)> = (0..n_scores).map(|j| op.affine(j)).collect();
    if maps.iter().all(|&(a, b)| a == 1.0 && b == 0.0) {
        return Ok(format!(
            "{} by {} on the scores (an identity) dropped",
            op.op_type(),
            if matches!(op, ElemOp::Mul(_) | ElemOp::Div(_)) {
                1
            } else {
                0
            }
        ));
    }
    let regressor_raw = match model {
        FloatModel::Trees(e) => {
            matches!(e.task, OnnxTask::Regressor { .. }) && e.post == PostTransform::None
        }
        FloatModel::Linear(l) => {
            matches!(l.task, OnnxTask::Regressor { .. }) && l.post == PostTransform::None
        }
        FloatModel::Mlp(_) => false,
    };
    if !regressor_raw {
        return Err(err(
            "an affine map of a classifier's probabilities (or of transformed scores) is not \
             supported; only an identity (multiplying by 1, adding 0) is"
                .into(),
        ));
    }
    match model {
        FloatModel::Trees(e) => {
            if e.base_values.is_empty() {
                e.base_values = vec![0.0; n_scores];
            }
            for t in &mut e.trees {
                for nd in &mut t.nodes {
                    if let Node::Leaf { weights } = nd {
                        for (slot, w) in weights.iter_mut() {
                            *w = (*w as f64 * maps[*slot].0) as f32;
                        }
                    }
                }
            }
            for (b, (a, c)) in e.base_values.iter_mut().zip(&maps) {
                *b = (*b as f64 * a + c) as f32;
            }
            e.weights_positive =
                e.trees.iter().flat_map(|t| &t.nodes).all(
                    |n| !matches!(n, Node::Leaf { weights } if weights.iter().any(|w| w.1 < 0.0)),
                );
            Ok(format!(
                "{} on the scores folded into the leaf values",
                op.op_type()
            ))
        }
        FloatModel::Linear(l) => {
            for ((row, b), (a, c)) in l.coefficients.iter_mut().zip(&mut l.intercepts).zip(&maps) {
                row.iter_mut().for_each(|w| *w = (*w as f64 * a) as f32);
                *b = (*b as f64 * a + c) as f32;
            }
            Ok(format!(
                "{} on the scores folded into the weights",
                op.op_type()
            ))
        }
        FloatModel::Mlp(_) => unreachable!(),
    }
}

/// A branch's outcome on the raw feature after folding the preprocessing in.
enum Folded {
    Branch(Cmp, f32),
    Always(bool),
}

/// Orders f32 values (not NaN) as integers: `key(a) <= key(b)` iff `a <= b`, with -0 = +0.
fn key(x: f32) -> i64 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        -i64::from(b & 0x7fff_ffff)
    } else {
        i64::from(b)
    }
}

fn unkey(k: i64) -> f32 {
    if k < 0 {
        f32::from_bits((-k) as u32 | 0x8000_0000)
    } else {
        f32::from_bits(k as u32)
    }
}

/// `cmp(g(x), t)` as one comparison of the raw `x`, where `g` is feature `j`'s preprocessing in
/// f32. Every operator rounds monotonically, so `g` is monotone (increasing when its real slope
/// is positive) and the records taking the branch are all raw values on one side of an f32
/// boundary, found exactly by bisection over the f32 values: the folded comparison agrees with
/// ONNX Runtime's on every non-NaN input (a NaN stays NaN and takes the missing-value path).
fn fold_branch(p: &Preprocess, j: usize, cmp: Cmp, t: f32) -> Folded {
    let holds = |x: f32| cmp.holds(p.feature(j, x), t);
    let slope = p.affine(j).0;
    if slope == 0.0 || slope.is_nan() {
        return Folded::Always(holds(0.0));
    }
    let (lo, hi) = (key(f32::NEG_INFINITY), key(f32::INFINITY));
    let below = matches!(cmp, Cmp::Leq | Cmp::Lt) == (slope > 0.0);
    if below {
        // Holds for x <= X: find the largest such X.
        match (holds(unkey(lo)), holds(unkey(hi))) {
            (false, _) => return Folded::Always(false),
            (true, true) => return Folded::Always(true),
            _ => {}
        }
        let (yes, _) = transition(lo, hi, |k| holds(unkey(k)));
        Folded::Branch(Cmp::Leq, unkey(yes))
    } else {
        // Holds for x >= X: find the smallest such X.
        match (holds(unkey(lo)), holds(unkey(hi))) {
            (_, false) => return Folded::Always(false),
            (true, true) => return Folded::Always(true),
            _ => {}
        }
        let (_, yes) = transition(lo, hi, |k| holds(unkey(k)));
        Folded::Branch(Cmp::Gte, unkey(yes))
    }
}

/// For a predicate monotone over the ordered keys `lo..=hi` that differs at its ends: the two
/// adjacent keys `(a, a + 1)` between which it changes (bisection).
fn transition(mut lo: i64, mut hi: i64, f: impl Fn(i64) -> bool) -> (i64, i64) {
    let at_lo = f(lo);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if f(mid) == at_lo { lo = mid } else { hi = mid }
    }
    (lo, hi)
}

/// Moves the preprocessing into every threshold ([`fold_branch`]); branches that become
/// constant are resolved (replaced by the subtree they always take). Returns how many were.
fn fold_thresholds(e: &mut TreeEnsemble, p: &Preprocess) -> usize {
    let mut resolved = 0;
    for tree in &mut e.trees {
        let old = std::mem::take(&mut tree.nodes);
        let mut out = Vec::with_capacity(old.len());
        rebuild(&old, 0, p, &mut out, &mut resolved);
        tree.nodes = out;
    }
    resolved
}

fn rebuild(
    old: &[Node],
    i: usize,
    p: &Preprocess,
    out: &mut Vec<Node>,
    resolved: &mut usize,
) -> usize {
    match &old[i] {
        Node::Leaf { weights } => {
            out.push(Node::Leaf {
                weights: weights.clone(),
            });
            out.len() - 1
        }
        Node::Branch {
            feature,
            threshold,
            cmp,
            yes,
            no,
            missing_yes,
        } => match fold_branch(p, *feature, *cmp, *threshold) {
            Folded::Always(taken) => {
                *resolved += 1;
                rebuild(old, if taken { *yes } else { *no }, p, out, resolved)
            }
            Folded::Branch(cmp, threshold) => {
                let at = out.len();
                out.push(Node::Leaf { weights: vec![] });
                let y = rebuild(old, *yes, p, out, resolved);
                let n = rebuild(old, *no, p, out, resolved);
                out[at] = Node::Branch {
                    feature: *feature,
                    threshold,
                    cmp,
                    yes: y,
                    no: n,
                    missing_yes: *missing_yes,
                };
                at
            }
        },
    }
}

pub(crate) fn unsupported(node: &NodeProto, attr: &str, value: &str) -> ImportError {
    ImportError::UnsupportedAttribute {
        op: node.op_type.clone(),
        attr: attr.to_string(),
        value: value.to_string(),
    }
}

pub(crate) fn invalid(node: &NodeProto, detail: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        op: node.op_type.clone(),
        detail: detail.into(),
    }
}

/// A node's attributes by name, with typed accessors that name what is wrong.
pub(crate) struct Attrs<'a> {
    node: &'a NodeProto,
    map: HashMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(node: &'a NodeProto) -> Result<Self, ImportError> {
        let mut map = HashMap::new();
        for a in &node.attribute {
            if map.insert(a.name.as_str(), a).is_some() {
                return Err(invalid(node, format!("attribute {} appears twice", a.name)));
            }
        }
        Ok(Self { node, map })
    }

    fn get(&self, name: &str, ty: i32) -> Result<Option<&'a AttributeProto>, ImportError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(a) if a.r#type == ty => Ok(Some(a)),
            Some(a) => Err(invalid(
                self.node,
                format!("attribute {name} has type {}, expected {ty}", a.r#type),
            )),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<String>, ImportError> {
        self.get(name, attr_type::STRING)?
            .map(|a| {
                String::from_utf8(a.s.clone())
                    .map_err(|_| invalid(self.node, format!("attribute {name} is not UTF-8")))
            })
            .transpose()
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ImportError> {
        Ok(self.get(name, attr_type::INT)?.map(|a| a.i))
    }

    pub(crate) fn float(&self, name: &str) -> Result<Option<f32>, ImportError> {
        Ok(self.get(name, attr_type::FLOAT)?.map(|a| a.f))
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Vec<i64>, ImportError> {
        Ok(self
            .get(name, attr_type::INTS)?
            .map(|a| a.ints.clone())
            .unwrap_or_default())
    }

    pub(crate) fn strings(&self, name: &str) -> Result<Vec<String>, ImportError> {
        self.get(name, attr_type::STRINGS)?
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone()).map_err(|_| {
                            invalid(self.node, format!("attribute {name} is not UTF-8"))
                        })
                    })
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// A float list, given as FLOATS `name` or as a tensor `name_as_tensor` (opset 3).
    pub(crate) fn floats(&self, name: &str) -> Result<Vec<f32>, ImportError> {
        if let Some(a) = self.get(name, attr_type::FLOATS)? {
            return Ok(a.floats.clone());
        }
        self.tensor_floats(&format!("{name}_as_tensor"))
    }

    /// A uint8 tensor attribute (`TreeEnsemble`'s `nodes_modes`); empty when absent.
    fn tensor_u8(&self, name: &str) -> Result<Vec<u8>, ImportError> {
        let Some(a) = self.get(name, attr_type::TENSOR)? else {
            return Ok(Vec::new());
        };
        let t =
            a.t.as_ref()
                .ok_or_else(|| invalid(self.node, format!("{name} holds no tensor")))?;
        if t.data_location != 0 {
            return Err(unsupported(self.node, name, "external data"));
        }
        match t.data_type {
            data_type::UINT8 if !t.raw_data.is_empty() => Ok(t.raw_data.clone()),
            data_type::UINT8 => t
                .int32_data
                .iter()
                .map(|&v| {
                    u8::try_from(v).map_err(|_| invalid(self.node, format!("{name} holds {v}")))
                })
                .collect(),
            other => Err(unsupported(self.node, name, &format!("data type {other}"))),
        }
    }

    /// A float (or double) tensor attribute; empty when absent.
    fn tensor_floats(&self, tensor_name: &str) -> Result<Vec<f32>, ImportError> {
        let Some(a) = self.get(tensor_name, attr_type::TENSOR)? else {
            return Ok(Vec::new());
        };
        let t =
            a.t.as_ref()
                .ok_or_else(|| invalid(self.node, format!("{tensor_name} holds no tensor")))?;
        if t.data_location != 0 {
            return Err(unsupported(self.node, tensor_name, "external data"));
        }
        match t.data_type {
            data_type::FLOAT if !t.raw_data.is_empty() => Ok(t
                .raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()),
            data_type::FLOAT => Ok(t.float_data.clone()),
            data_type::DOUBLE if !t.raw_data.is_empty() => Ok(t
                .raw_data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()),
            data_type::DOUBLE => Ok(t.double_data.iter().map(|&d| d as f32).collect()),
            other => Err(unsupported(
                self.node,
                tensor_name,
                &format!("data type {other}"),
            )),
        }
    }

    fn post_transform(&self) -> Result<PostTransform, ImportError> {
        match self.string("post_transform")?.as_deref() {
            None | Some("NONE") => Ok(PostTransform::None),
            Some("LOGISTIC") => Ok(PostTransform::Logistic),
            Some("SOFTMAX") => Ok(PostTransform::Softmax),
            Some(other) => Err(unsupported(self.node, "post_transform", other)),
        }
    }

    /// Class labels: `classlabels_int64s`/`classlabels_ints` or `classlabels_strings`.
    fn labels(&self) -> Result<Vec<String>, ImportError> {
        let mut ints = self.ints("classlabels_int64s")?;
        if ints.is_empty() {
            ints = self.ints("classlabels_ints")?;
        }
        let strings = self.strings("classlabels_strings")?;
        let labels: Vec<String> = match (ints.is_empty(), strings.is_empty()) {
            (false, true) => ints.iter().map(|i| i.to_string()).collect(),
            (true, false) => strings,
            _ => {
                return Err(invalid(
                    self.node,
                    "exactly one list of class labels is needed",
                ));
            }
        };
        if labels.len() < 2 {
            return Err(invalid(
                self.node,
                "a classifier needs at least two classes",
            ));
        }
        Ok(labels)
    }
}

fn feature_count(
    node: &NodeProto,
    declared: Option<i64>,
    needed: usize,
) -> Result<usize, ImportError> {
    match declared {
        Some(d) if (d as usize) < needed => Err(invalid(
            node,
            format!("the input declares {d} features but the model uses {needed}"),
        )),
        Some(d) => Ok(d as usize),
        None => Ok(needed),
    }
}

fn linear(node: &NodeProto, a: &Attrs, declared: Option<i64>) -> Result<Linear, ImportError> {
    let coefficients = a.floats("coefficients")?;
    let mut intercepts = a.floats("intercepts")?;
    let (task, rows) = if node.op_type == "LinearClassifier" {
        if let Some(m) = a.int("multi_class")?
            && m != 0
            && m != 1
        {
            return Err(unsupported(node, "multi_class", &m.to_string()));
        }
        let labels = a.labels()?;
        let rows = if labels.len() == 2 && coefficients.len() % 2 != 0 {
            1
        } else {
            labels.len()
        };
        (OnnxTask::Classifier { labels }, rows)
    } else {
        let targets = a.int("targets")?.unwrap_or(1);
        if !(1..=64).contains(&targets) {
            return Err(unsupported(node, "targets", &targets.to_string()));
        }
        (
            OnnxTask::Regressor {
                targets: targets as usize,
            },
            targets as usize,
        )
    };
    if coefficients.is_empty() || coefficients.len() % rows != 0 {
        return Err(invalid(
            node,
            format!("{} coefficients for {rows} rows", coefficients.len()),
        ));
    }
    if intercepts.is_empty() {
        intercepts = vec![0.0; rows];
    }
    if intercepts.len() != rows {
        return Err(invalid(
            node,
            format!("{} intercepts for {rows} rows", intercepts.len()),
        ));
    }
    let per_row = coefficients.len() / rows;
    Ok(Linear {
        task,
        n_features: feature_count(node, declared, per_row)?,
        pre: None,
        coefficients: coefficients.chunks(per_row).map(<[f32]>::to_vec).collect(),
        intercepts,
        post: a.post_transform()?,
    })
}

fn trees(node: &NodeProto, a: &Attrs, declared: Option<i64>) -> Result<TreeEnsemble, ImportError> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    let tree_ids = a.ints("nodes_treeids")?;
    let node_ids = a.ints("nodes_nodeids")?;
    let features = a.ints("nodes_featureids")?;
    let modes = a.strings("nodes_modes")?;
    let values = a.floats("nodes_values")?;
    let yes = a.ints("nodes_truenodeids")?;
    let no = a.ints("nodes_falsenodeids")?;
    let missing = a.ints("nodes_missing_value_tracks_true")?;
    let n = tree_ids.len();
    same_lengths(
        node,
        ("nodes_treeids", n),
        &[
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_values", values.len()),
            ("nodes_truenodeids", yes.len()),
            ("nodes_falsenodeids", no.len()),
        ],
        missing.len(),
    )?;
    if n == 0 {
        return Err(invalid(node, "no nodes"));
    }
    let prefix = if classifier { "class" } else { "target" };
    let leaf_tree = a.ints(&format!("{prefix}_treeids"))?;
    let leaf_node = a.ints(&format!("{prefix}_nodeids"))?;
    let leaf_slot = a.ints(&format!("{prefix}_ids"))?;
    let leaf_weight = a.floats(&format!("{prefix}_weights"))?;
    let m = leaf_tree.len();
    if leaf_node.len() != m || leaf_slot.len() != m || leaf_weight.len() != m || m == 0 {
        return Err(invalid(
            node,
            format!("the {prefix}_* lists disagree in length"),
        ));
    }
    let (task, n_scores) = if classifier {
        let labels = a.labels()?;
        let max_slot = leaf_slot.iter().copied().max().unwrap_or(0);
        let slots = if labels.len() == 2 && max_slot == 0 {
            1
        } else {
            labels.len()
        };
        (OnnxTask::Classifier { labels }, slots)
    } else {
        let targets = a.int("n_targets")?.unwrap_or(1);
        if !(1..=64).contains(&targets) {
            return Err(unsupported(node, "n_targets", &targets.to_string()));
        }
        (
            OnnxTask::Regressor {
                targets: targets as usize,
            },
            targets as usize,
        )
    };
    let average = match a.string("aggregate_function")?.as_deref() {
        None | Some("SUM") => false,
        Some("AVERAGE") if !classifier => true,
        Some(other) => return Err(unsupported(node, "aggregate_function", other)),
    };
    let base_values = a.floats("base_values")?;
    if !base_values.is_empty() && base_values.len() != n_scores {
        return Err(invalid(
            node,
            format!("{} base values for {n_scores} scores", base_values.len()),
        ));
    }

    // Group nodes by tree, in order of first appearance.
    let mut order: Vec<i64> = Vec::new();
    let mut by_tree: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, &t) in tree_ids.iter().enumerate() {
        by_tree.entry(t).or_insert_with(|| {
            order.push(t);
            Vec::new()
        });
        by_tree.get_mut(&t).expect("inserted").push(i);
    }
    let mut leaves: HashMap<(i64, i64), Vec<(usize, f32)>> = HashMap::new();
    for j in 0..m {
        let slot = leaf_slot[j];
        if slot < 0 || slot as usize >= n_scores {
            return Err(invalid(
                node,
                format!("{prefix}_ids holds {slot}; {n_scores} scores"),
            ));
        }
        leaves
            .entry((leaf_tree[j], leaf_node[j]))
            .or_default()
            .push((slot as usize, leaf_weight[j]));
    }
    let mut max_feature = 0usize;
    let mut out = Vec::with_capacity(order.len());
    for t in order {
        let idx = &by_tree[&t];
        let local: HashMap<i64, usize> = idx
            .iter()
            .enumerate()
            .map(|(k, &i)| (node_ids[i], k))
            .collect();
        if local.len() != idx.len() {
            return Err(invalid(node, format!("tree {t} repeats a node id")));
        }
        let child = |id: i64| {
            local
                .get(&id)
                .copied()
                .ok_or_else(|| invalid(node, format!("tree {t} has no node {id}")))
        };
        let mut nodes = Vec::with_capacity(idx.len());
        for &i in idx {
            let mode = modes[i].as_str();
            let cmp = match mode {
                "LEAF" => {
                    let weights = leaves.remove(&(t, node_ids[i])).unwrap_or_default();
                    nodes.push(Node::Leaf { weights });
                    continue;
                }
                "BRANCH_LEQ" => Cmp::Leq,
                "BRANCH_LT" => Cmp::Lt,
                "BRANCH_GTE" => Cmp::Gte,
                "BRANCH_GT" => Cmp::Gt,
                other => return Err(unsupported(node, "nodes_modes", other)),
            };
            if features[i] < 0 || features[i] > 1 << 20 {
                return Err(invalid(node, format!("feature id {}", features[i])));
            }
            if values[i].is_nan() {
                return Err(invalid(node, "a NaN threshold"));
            }
            max_feature = max_feature.max(features[i] as usize);
            nodes.push(Node::Branch {
                feature: features[i] as usize,
                threshold: values[i],
                cmp,
                yes: child(yes[i])?,
                no: child(no[i])?,
                missing_yes: missing.get(i).is_some_and(|&v| v != 0),
            });
        }
        // The root is the node no other node points to; move it to index 0.
        let mut pointed = vec![false; nodes.len()];
        for nd in &nodes {
            if let Node::Branch { yes, no, .. } = nd {
                pointed[*yes] = true;
                pointed[*no] = true;
            }
        }
        let roots: Vec<usize> = (0..nodes.len()).filter(|&k| !pointed[k]).collect();
        let [root] = roots.as_slice() else {
            return Err(invalid(node, format!("tree {t} has {} roots", roots.len())));
        };
        let tree = reroot(nodes, *root);
        check_shape(node, t, &tree)?;
        out.push(tree);
    }
    if let Some(((t, id), _)) = leaves.iter().next() {
        return Err(invalid(
            node,
            format!("weights for tree {t} node {id}, which is not a leaf"),
        ));
    }
    let weights_positive = leaf_weight.iter().all(|&w| w >= 0.0);
    Ok(TreeEnsemble {
        task,
        n_features: feature_count(node, declared, max_feature + 1)?,
        trees: out,
        n_scores,
        base_values,
        post: a.post_transform()?,
        average,
        weights_positive,
    })
}

/// A node still to visit: its index in the file, where its local index goes (the parent's
/// local index and whether it is the yes branch), and its depth.
type Visit = (i64, Option<(usize, bool)>, usize);

/// Most nodes one `TreeEnsemble` may hold (ONNX Runtime's own models stay far below).
const MAX_V5_NODES: usize = 1 << 22;

/// The opset-5 `TreeEnsemble` (ai.onnx.ml 5), which newer converters emit instead of
/// `TreeEnsembleClassifier`/`TreeEnsembleRegressor`: trees given by their roots, a node's child
/// being a node or a leaf (`nodes_trueleafs`/`nodes_falseleafs`), leaves one weight for one
/// target each. Its output is the raw scores, read as a regressor's (`n_targets` of them).
fn trees_v5(
    node: &NodeProto,
    a: &Attrs,
    declared: Option<i64>,
) -> Result<TreeEnsemble, ImportError> {
    let features = a.ints("nodes_featureids")?;
    let splits = a.tensor_floats("nodes_splits")?;
    let modes = a.tensor_u8("nodes_modes")?;
    let yes = a.ints("nodes_truenodeids")?;
    let no = a.ints("nodes_falsenodeids")?;
    let yes_leaf = a.ints("nodes_trueleafs")?;
    let no_leaf = a.ints("nodes_falseleafs")?;
    let missing = a.ints("nodes_missing_value_tracks_true")?;
    let roots = a.ints("tree_roots")?;
    let leaf_target = a.ints("leaf_targetids")?;
    let leaf_weight = a.tensor_floats("leaf_weights")?;
    let n = features.len();
    if n == 0 || n > MAX_V5_NODES {
        return Err(invalid(node, format!("{n} nodes")));
    }
    same_lengths(
        node,
        ("nodes_featureids", n),
        &[
            ("nodes_splits", splits.len()),
            ("nodes_modes", modes.len()),
            ("nodes_truenodeids", yes.len()),
            ("nodes_falsenodeids", no.len()),
            ("nodes_trueleafs", yes_leaf.len()),
            ("nodes_falseleafs", no_leaf.len()),
        ],
        missing.len(),
    )?;
    if a.tensor_floats("membership_values")?
        .iter()
        .any(|v| !v.is_nan())
    {
        return Err(unsupported(
            node,
            "membership_values",
            "set membership splits",
        ));
    }
    let m = leaf_target.len();
    if m == 0 || leaf_weight.len() != m {
        return Err(invalid(
            node,
            "leaf_targetids and leaf_weights disagree in length",
        ));
    }
    let targets = a
        .int("n_targets")?
        .ok_or_else(|| invalid(node, "n_targets is missing"))?;
    if !(1..=64).contains(&targets) {
        return Err(unsupported(node, "n_targets", &targets.to_string()));
    }
    let n_scores = targets as usize;
    let average = match a.int("aggregate_function")? {
        None | Some(1) => false,
        Some(0) => true,
        Some(other) => {
            let name = match other {
                2 => "MIN".to_string(),
                3 => "MAX".to_string(),
                o => o.to_string(),
            };
            return Err(unsupported(node, "aggregate_function", &name));
        }
    };
    let post = match a.int("post_transform")? {
        None | Some(0) => PostTransform::None,
        Some(1) => PostTransform::Softmax,
        Some(2) => PostTransform::Logistic,
        Some(3) => return Err(unsupported(node, "post_transform", "SOFTMAX_ZERO")),
        Some(4) => return Err(unsupported(node, "post_transform", "PROBIT")),
        Some(o) => return Err(unsupported(node, "post_transform", &o.to_string())),
    };
    let leaf = |j: i64| -> Result<Node, ImportError> {
        let j = usize::try_from(j)
            .ok()
            .filter(|&j| j < m)
            .ok_or_else(|| invalid(node, format!("leaf {j} of {m}")))?;
        let t = leaf_target[j];
        if t < 0 || t >= targets {
            return Err(invalid(
                node,
                format!("leaf target {t}; n_targets {targets}"),
            ));
        }
        Ok(Node::Leaf {
            weights: vec![(t as usize, leaf_weight[j])],
        })
    };
    let mut max_feature = 0usize;
    let mut out = Vec::with_capacity(roots.len());
    for (t, &root) in roots.iter().enumerate() {
        // Depth-first from the root; every node index is visited at most once per tree.
        let mut nodes: Vec<Node> = Vec::new();
        let mut seen: HashSet<usize> = HashSet::new();
        let mut stack: Vec<Visit> = vec![(root, None, 0)];
        while let Some((i, parent, depth)) = stack.pop() {
            if depth > MAX_TREE_DEPTH {
                return Err(invalid(
                    node,
                    format!("tree {t} is deeper than {MAX_TREE_DEPTH}"),
                ));
            }
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| invalid(node, format!("tree {t} points to node {i} of {n}")))?;
            if !seen.insert(i) {
                return Err(invalid(
                    node,
                    format!("tree {t} is not a tree (node reached twice)"),
                ));
            }
            let cmp = match modes[i] {
                0 => Cmp::Leq,
                1 => Cmp::Lt,
                2 => Cmp::Gte,
                3 => Cmp::Gt,
                4 => return Err(unsupported(node, "nodes_modes", "BRANCH_EQ")),
                5 => return Err(unsupported(node, "nodes_modes", "BRANCH_NEQ")),
                6 => return Err(unsupported(node, "nodes_modes", "BRANCH_MEMBER")),
                o => return Err(unsupported(node, "nodes_modes", &o.to_string())),
            };
            if features[i] < 0 || features[i] > 1 << 20 {
                return Err(invalid(node, format!("feature id {}", features[i])));
            }
            if splits[i].is_nan() {
                return Err(invalid(node, "a NaN threshold"));
            }
            max_feature = max_feature.max(features[i] as usize);
            let me = nodes.len();
            nodes.push(Node::Branch {
                feature: features[i] as usize,
                threshold: splits[i],
                cmp,
                yes: usize::MAX,
                no: usize::MAX,
                missing_yes: missing.get(i).is_some_and(|&v| v != 0),
            });
            if let Some((p, is_yes)) = parent {
                set_child(&mut nodes[p], is_yes, me);
            }
            for (child, is_leaf, is_yes) in
                [(yes[i], yes_leaf[i], true), (no[i], no_leaf[i], false)]
            {
                if is_leaf != 0 {
                    let l = nodes.len();
                    nodes.push(leaf(child)?);
                    set_child(&mut nodes[me], is_yes, l);
                } else {
                    stack.push((child, Some((me, is_yes)), depth + 1));
                }
            }
        }
        let tree = Tree { nodes };
        check_shape(node, t as i64, &tree)?;
        out.push(tree);
    }
    if out.is_empty() {
        return Err(invalid(node, "tree_roots is empty"));
    }
    Ok(TreeEnsemble {
        task: OnnxTask::Regressor { targets: n_scores },
        n_features: feature_count(node, declared, max_feature + 1)?,
        trees: out,
        n_scores,
        base_values: Vec::new(),
        post,
        average,
        weights_positive: leaf_weight.iter().all(|&w| w >= 0.0),
    })
}

fn set_child(parent: &mut Node, is_yes: bool, child: usize) {
    if let Node::Branch { yes, no, .. } = parent {
        *(if is_yes { yes } else { no }) = child;
    }
}

/// Every per-node list of an ensemble has the first list's length, and
/// `nodes_missing_value_tracks_true` too when given.
fn same_lengths(
    node: &NodeProto,
    (first, n): (&str, usize),
    lists: &[(&str, usize)],
    missing: usize,
) -> Result<(), ImportError> {
    for &(what, len) in lists {
        if len != n {
            return Err(invalid(
                node,
                format!("{what} has {len} entries, {first} {n}"),
            ));
        }
    }
    if missing != 0 && missing != n {
        return Err(invalid(
            node,
            "nodes_missing_value_tracks_true has the wrong length",
        ));
    }
    Ok(())
}

/// Swaps the root into index 0, fixing child indices.
fn reroot(mut nodes: Vec<Node>, root: usize) -> Tree {
    if root != 0 {
        nodes.swap(0, root);
        let fix = |i: &mut usize| {
            if *i == 0 {
                *i = root;
            } else if *i == root {
                *i = 0;
            }
        };
        for nd in &mut nodes {
            if let Node::Branch { yes, no, .. } = nd {
                fix(yes);
                fix(no);
            }
        }
    }
    Tree { nodes }
}

/// Every node is reached exactly once from the root, within the depth limit (no cycles, no
/// shared subtrees, no orphans).
fn check_shape(node: &NodeProto, t: i64, tree: &Tree) -> Result<(), ImportError> {
    let mut seen = vec![false; tree.nodes.len()];
    let mut stack = vec![(0usize, 0usize)];
    while let Some((i, depth)) = stack.pop() {
        if depth > MAX_TREE_DEPTH {
            return Err(invalid(
                node,
                format!("tree {t} is deeper than {MAX_TREE_DEPTH}"),
            ));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(invalid(
                node,
                format!("tree {t} is not a tree (node reached twice)"),
            ));
        }
        if let Node::Branch { yes, no, .. } = &tree.nodes[i] {
            stack.push((*yes, depth + 1));
            stack.push((*no, depth + 1));
        }
    }
    if seen.iter().any(|s| !s) {
        return Err(invalid(node, format!("tree {t} has unreachable nodes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scaler;

    fn next(s: &mut u64) -> f32 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 40) as f32 / (1u64 << 24) as f32
    }

    fn ulps(x: f32, n: i64) -> f32 {
        unkey(key(x) + n)
    }

    /// Folded comparisons agree with the f32 preprocessing then the comparison, on random
    /// records and on every value within a few ulps of each folded boundary.
    #[test]
    fn folded_thresholds_agree_with_onnx_runtimes_order_of_operations() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..400 {
            let o = (next(&mut s) - 0.5) * 40.0;
            let k = (next(&mut s) - 0.5) * 8.0;
            let p = Preprocess {
                ops: match case % 3 {
                    0 => vec![ElemOp::Scaler(Scaler {
                        offset: vec![o],
                        scale: vec![k],
                    })],
                    1 => vec![ElemOp::Mul(vec![k]), ElemOp::Add(vec![o])],
                    _ => vec![ElemOp::Sub(vec![o]), ElemOp::Div(vec![k])],
                },
            };
            let t = (next(&mut s) - 0.5) * 10.0;
            for cmp in [Cmp::Leq, Cmp::Lt, Cmp::Gte, Cmp::Gt] {
                let want = |x: f32| cmp.holds(p.feature(0, x), t);
                match fold_branch(&p, 0, cmp, t) {
                    Folded::Always(v) => {
                        for _ in 0..50 {
                            let x = (next(&mut s) - 0.5) * 100.0;
                            assert_eq!(want(x), v, "{p:?} {cmp:?} {t}");
                        }
                    }
                    Folded::Branch(c2, t2) => {
                        let mut xs: Vec<f32> = (-4..=4).map(|n| ulps(t2, n)).collect();
                        xs.extend((0..50).map(|_| (next(&mut s) - 0.5) * 100.0));
                        for x in xs {
                            assert_eq!(c2.holds(x, t2), want(x), "{p:?} {cmp:?} {t} at {x}");
                        }
                    }
                }
            }
        }
        // A zero scale makes the branch constant.
        let zero = Preprocess {
            ops: vec![ElemOp::Mul(vec![0.0])],
        };
        assert!(matches!(
            fold_branch(&zero, 0, Cmp::Leq, 0.5),
            Folded::Always(true)
        ));
        assert!(matches!(
            fold_branch(&zero, 0, Cmp::Gt, 0.5),
            Folded::Always(false)
        ));
    }

    #[test]
    fn constant_branches_are_replaced_by_the_subtree_they_take() {
        let leaf = |w: f32| Node::Leaf {
            weights: vec![(0, w)],
        };
        let branch = |feature, yes, no| Node::Branch {
            feature,
            threshold: 0.5,
            cmp: Cmp::Leq,
            yes,
            no,
            missing_yes: false,
        };
        // Root on feature 0 (scaled by 0: always 0 <= 0.5), then feature 1.
        let mut e = TreeEnsemble {
            task: OnnxTask::Regressor { targets: 1 },
            n_features: 2,
            trees: vec![Tree {
                nodes: vec![
                    branch(0, 1, 4),
                    branch(1, 2, 3),
                    leaf(1.0),
                    leaf(2.0),
                    leaf(3.0),
                ],
            }],
            n_scores: 1,
            base_values: vec![],
            post: PostTransform::None,
            average: false,
            weights_positive: true,
        };
        let p = Preprocess {
            ops: vec![ElemOp::Mul(vec![0.0, 1.0])],
        };
        assert_eq!(fold_thresholds(&mut e, &p), 1);
        let t = &e.trees[0];
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(t.leaf(&[100.0, 0.0]), &[(0, 1.0)]);
        assert_eq!(t.leaf(&[-100.0, 1.0]), &[(0, 2.0)]);
    }
}
