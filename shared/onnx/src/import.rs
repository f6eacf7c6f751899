//! From ONNX bytes to a [`FloatModel`]: the graph is checked to be one supported model operator
//! with only shape-preserving helpers around it, or a dense network ([`crate::mlp`]), and every
//! attribute is checked before use.

use crate::mlp::{MLP_OP_TYPE, Walk, is_dense_op};
use crate::model::{Cmp, FloatModel, Linear, Node, OnnxTask, PostTransform, Tree, TreeEnsemble};
use crate::proto::{AttributeProto, ModelProto, NodeProto, attr_type, data_type};
use prost::Message;
use std::collections::HashMap;

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
        "unsupported ONNX operator {op_type} (domain {domain:?}, node {node:?}); supported: LinearClassifier, LinearRegressor, TreeEnsembleClassifier, TreeEnsembleRegressor, with Cast, Identity, ZipMap and Normalizer(L1) around them; or a dense network: MatMul+Add or Gemm layers, Relu, Tanh, Sigmoid, Softmax (last), BatchNormalization (right after a layer), Dropout, Identity, Cast, Reshape, Flatten, Scaler/Sub/Add/Mul/Div by constants, and skl2onnx's label operators (Concat, ArgMax, ArrayFeatureExtractor, ZipMap)"
    )]
    UnsupportedOperator {
        op_type: String,
        domain: String,
        node: String,
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
        "the graph holds no model operator (LinearClassifier, LinearRegressor, TreeEnsembleClassifier, TreeEnsembleRegressor) and no dense layer (MatMul, Gemm) on its output's path"
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
}

const MODEL_OPS: [&str; 4] = [
    "LinearClassifier",
    "LinearRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
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
    let producer = format!("{} {}", proto.producer_name, proto.producer_version)
        .trim()
        .to_string();
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
        return Ok(Imported {
            model: FloatModel::Mlp(mlp),
            producer,
            op_type: MLP_OP_TYPE.to_string(),
        });
    }
    let mut main = Vec::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            op if MODEL_OPS.contains(&op) && node.domain == "ai.onnx.ml" => main.push(node),
            "Cast" | "Identity" if node.domain.is_empty() => {}
            "ZipMap" if node.domain == "ai.onnx.ml" => {}
            "Normalizer" if node.domain == "ai.onnx.ml" => {
                let norm = Attrs::new(node)?.string("norm")?.unwrap_or_default();
                if norm != "L1" {
                    return Err(unsupported(node, "norm", &norm));
                }
            }
            _ => {
                return Err(ImportError::UnsupportedOperator {
                    op_type: node.op_type.clone(),
                    domain: node.domain.clone(),
                    node: node.name.clone(),
                });
            }
        }
    }
    let node = match main.as_slice() {
        [] => return Err(ImportError::NoModel),
        [one] => *one,
        many => return Err(ImportError::SeveralModels(many.len())),
    };
    let declared = graph.input.first().and_then(|i| {
        let shape = i.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
        shape.dim.get(1)?.dim_value.filter(|&d| d > 0)
    });
    let attrs = Attrs::new(node)?;
    let model = match node.op_type.as_str() {
        "LinearClassifier" | "LinearRegressor" => {
            FloatModel::Linear(linear(node, &attrs, declared)?)
        }
        _ => FloatModel::Trees(trees(node, &attrs, declared)?),
    };
    Ok(Imported {
        model,
        producer,
        op_type: node.op_type.clone(),
    })
}

fn unsupported(node: &NodeProto, attr: &str, value: &str) -> ImportError {
    ImportError::UnsupportedAttribute {
        op: node.op_type.clone(),
        attr: attr.to_string(),
        value: value.to_string(),
    }
}

fn invalid(node: &NodeProto, detail: impl Into<String>) -> ImportError {
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

    fn string(&self, name: &str) -> Result<Option<String>, ImportError> {
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

    fn strings(&self, name: &str) -> Result<Vec<String>, ImportError> {
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
        let tensor_name = format!("{name}_as_tensor");
        let Some(a) = self.get(&tensor_name, attr_type::TENSOR)? else {
            return Ok(Vec::new());
        };
        let t =
            a.t.as_ref()
                .ok_or_else(|| invalid(self.node, format!("{tensor_name} holds no tensor")))?;
        if t.data_location != 0 {
            return Err(unsupported(self.node, &tensor_name, "external data"));
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
                &tensor_name,
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
    for (what, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", features.len()),
        ("nodes_modes", modes.len()),
        ("nodes_values", values.len()),
        ("nodes_truenodeids", yes.len()),
        ("nodes_falsenodeids", no.len()),
    ] {
        if len != n {
            return Err(invalid(
                node,
                format!("{what} has {len} entries, nodes_treeids {n}"),
            ));
        }
    }
    if !missing.is_empty() && missing.len() != n {
        return Err(invalid(
            node,
            "nodes_missing_value_tracks_true has the wrong length",
        ));
    }
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
