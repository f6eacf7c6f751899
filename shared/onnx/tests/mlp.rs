//! Dense networks: every exported MLP sample (scikit-learn through skl2onnx, PyTorch-style
//! Gemm/MatMul graphs) imports and its float evaluation reproduces ONNX Runtime's labels and
//! probabilities, logits or predictions on the stored rows; convolution, pooling and a
//! batch norm with no layer to fold into are refused naming the operator; hand-built graphs
//! check the folding of element-wise operations and every typed refusal. The files come from
//! `infra/export_models.py`.

use fhe_batch_onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attr_type, data_type,
};
use fhe_batch_onnx::{
    Activation, FloatModel, ImportError, MAX_HIDDEN_LAYERS, MAX_WIDTH, Mlp, OnnxTask,
    PostTransform, import_onnx,
};
use prost::Message;
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let onnx = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let expected = std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap();
    (onnx, serde_json::from_slice(&expected).unwrap())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= 1e-5_f32.max(1e-4 * want.abs())
}

fn mlp_of(name: &str) -> Mlp {
    let (bytes, _) = fixture(name);
    match import_onnx(&bytes)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .model
    {
        FloatModel::Mlp(m) => m,
        other => panic!("{name}: {other:?}"),
    }
}

/// Imports `name`, compares with onnxruntime on every stored row (labels exactly, scores
/// within 1e-4 relative or 1e-5 absolute); returns the labels' accuracy (classifiers).
fn check(name: &str, scores_key: &str, label_key: Option<&str>) -> Option<f64> {
    let (bytes, exp) = fixture(name);
    let imported = import_onnx(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(imported.op_type, "MLP", "{name}");
    let model = &imported.model;
    assert!(matches!(model, FloatModel::Mlp(_)), "{name}");
    let xs: Vec<Vec<f32>> = exp["x"].as_array().unwrap().iter().map(floats).collect();
    assert!(!xs.is_empty());
    assert_eq!(model.n_features(), xs[0].len(), "{name}");
    let ort = &exp["onnxruntime"];
    let mut correct = 0;
    for (i, x) in xs.iter().enumerate() {
        let p = model.predict(x);
        let want = floats(&ort[scores_key][i]);
        assert_eq!(p.scores.len(), want.len(), "{name} row {i}");
        for (g, w) in p.scores.iter().zip(&want) {
            assert!(close(*g, *w), "{name} row {i}: {:?} vs {want:?}", p.scores);
        }
        let Some(label) = p.label else {
            assert!(label_key.is_none());
            continue;
        };
        let ort_label = match label_key {
            Some(key) => ort[key][i].to_string().trim_matches('"').to_string(),
            // No label output (PyTorch style): the argmax of the output.
            None => {
                let mut best = 0;
                for (j, w) in want.iter().enumerate() {
                    if *w > want[best] {
                        best = j;
                    }
                }
                best.to_string()
            }
        };
        assert_eq!(label, ort_label, "{name} row {i}");
        if label == exp["y"][i].as_str().unwrap() {
            correct += 1;
        }
    }
    matches!(model.task(), OnnxTask::Classifier { .. }).then(|| correct as f64 / xs.len() as f64)
}

#[test]
fn scikit_learn_networks_match_onnx_runtime() {
    for name in [
        "bc-mlp-30-32-2",
        "bc-mlp-noscaler",
        "iris-mlp-tanh",
        "iris-mlp-logistic",
    ] {
        let accuracy = check(name, "probabilities", Some("label")).unwrap();
        let (_, exp) = fixture(name);
        let float = exp["float_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - float).abs() < 1e-9,
            "{name}: {accuracy} vs {float}"
        );
    }
    for name in ["mnist-mlp-784-128-10", "mnist-mlp-784-128-64-10"] {
        let accuracy = check(name, "probabilities", Some("label")).unwrap();
        let (_, exp) = fixture(name);
        let stored = exp["stored_rows_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - stored).abs() < 1e-9,
            "{name}: {accuracy} vs {stored}"
        );
        assert!(exp["float_accuracy"].as_f64().unwrap() > 0.9, "{name}");
    }
    assert!(check("iris-mlp-regressor", "variable", None).is_none());
}

#[test]
fn pytorch_style_networks_match_onnx_runtime() {
    for name in [
        "torch-mlp-bc-32-16-2",
        "torch-mlp-matmul",
        "torch-mlp-bn-folded",
        "torch-mlp-leaky-logsoftmax",
    ] {
        let accuracy = check(name, "output", None).unwrap();
        let (_, exp) = fixture(name);
        let float = exp["float_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - float).abs() < 1e-9,
            "{name}: {accuracy} vs {float}"
        );
    }
}

#[test]
fn networks_have_the_exported_shape() {
    let m = mlp_of("bc-mlp-30-32-2");
    assert_eq!((m.n_features, m.hidden()), (30, vec![32]));
    assert_eq!(m.layers[0].activation, Activation::Relu);
    assert_eq!(m.layers[1].outputs, 1);
    assert_eq!(m.layers[1].activation, Activation::Identity);
    assert_eq!(m.post, PostTransform::Logistic);
    assert_eq!(
        m.task,
        OnnxTask::Classifier {
            labels: vec!["0".into(), "1".into()]
        }
    );
    assert_eq!(m.scaler.as_ref().unwrap().offset.len(), 30);
    assert!(mlp_of("bc-mlp-noscaler").scaler.is_none());

    let m = mlp_of("iris-mlp-regressor");
    assert_eq!(m.task, OnnxTask::Regressor { targets: 1 });
    assert_eq!((m.hidden(), m.post), (vec![16], PostTransform::None));
    assert!(m.scaler.is_some());

    // PyTorch's classic ending: LeakyReLU hidden units, log-probabilities out.
    let m = mlp_of("torch-mlp-leaky-logsoftmax");
    assert_eq!(m.layers[0].activation, Activation::LeakyRelu(0.1));
    assert_eq!((m.hidden(), m.post), (vec![16], PostTransform::LogSoftmax));

    let m = mlp_of("iris-mlp-tanh");
    assert_eq!(m.layers[0].activation, Activation::Tanh);
    assert_eq!((m.hidden(), m.post), (vec![8], PostTransform::Softmax));
    let m = mlp_of("iris-mlp-logistic");
    assert_eq!(m.layers[0].activation, Activation::Sigmoid);
    assert_eq!(m.post, PostTransform::Softmax);

    // MinMaxScaler on [0, 255] (Mul then Add of zeros): exactly x / 255 as a scaler.
    let m = mlp_of("mnist-mlp-784-128-64-10");
    assert_eq!((m.n_features, m.hidden()), (784, vec![128, 64]));
    let s = m.scaler.as_ref().unwrap();
    assert!(s.offset.iter().all(|&o| o == 0.0));
    assert!(s.scale.iter().all(|&k| (k - 1.0 / 255.0).abs() < 1e-9));
    assert_eq!(mlp_of("mnist-mlp-784-128-10").hidden(), vec![128]);

    // PyTorch style: the standardization in front becomes the scaler, the logits are the
    // scores, the labels are numbered.
    for name in ["torch-mlp-bc-32-16-2", "torch-mlp-matmul"] {
        let m = mlp_of(name);
        assert_eq!(m.hidden(), vec![32, 16], "{name}");
        assert_eq!(m.post, PostTransform::None, "{name}");
        assert!(m.scaler.is_some(), "{name}");
        assert_eq!(
            m.task,
            OnnxTask::Classifier {
                labels: vec!["0".into(), "1".into()]
            }
        );
    }
    // The batch norm is folded into the first layer.
    let m = mlp_of("torch-mlp-bn-folded");
    assert_eq!((m.hidden(), m.scaler.is_none()), (vec![32], true));

    // The caller may read a labelless multi-output network as a regressor.
    let m = mlp_of("torch-mlp-bc-32-16-2").as_regressor();
    assert_eq!(m.task, OnnxTask::Regressor { targets: 2 });
    let (_, exp) = fixture("torch-mlp-bc-32-16-2");
    let x = floats(&exp["x"][0]);
    let p = FloatModel::Mlp(m).predict(&x);
    assert_eq!(p.label, None);
    for (g, w) in p
        .scores
        .iter()
        .zip(floats(&exp["onnxruntime"]["output"][0]))
    {
        assert!(close(*g, w));
    }
}

#[test]
fn convolutions_pooling_and_unfoldable_batch_norms_are_refused() {
    for name in [
        "unsupported-conv",
        "unsupported-maxpool",
        "unsupported-batchnorm",
    ] {
        let (bytes, exp) = fixture(name);
        let op = exp["note"].as_str().unwrap();
        let e = import_onnx(&bytes).unwrap_err();
        assert!(
            matches!(&e, ImportError::UnsupportedOperator { op_type, .. } if op_type == op),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(op), "{e}");
        assert!(e.to_string().contains("dense network"), "{e}");
    }
}

// ---- Hand-built graphs ----------------------------------------------------------------------

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn int_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: data_type::INT64,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attr_type::INT,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("{op}_{output}"),
        op_type: op.into(),
        attribute,
        domain: String::new(),
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: d.is_none().then(|| "batch".to_string()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// A graph reading `x` ([batch, features]) and writing `y`.
fn model(features: i64, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        producer_name: "test".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: vec![value_info("x", &[None, Some(features)])],
            output: vec![value_info("y", &[None, None])],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// `count` dense layers of `width` units with Relu between them, ending in a 2-unit Gemm.
fn chain(features: usize, width: usize, count: usize) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    let mut n_in = features;
    for i in 0..count {
        let out = if i + 1 == count { 2 } else { width };
        let (w, b) = (format!("w{i}"), format!("b{i}"));
        inits.push(tensor(
            &w,
            &[out as i64, n_in as i64],
            &vec![0.01; out * n_in],
        ));
        inits.push(tensor(&b, &[out as i64], &vec![0.0; out]));
        let y = if i + 1 == count {
            "y".to_string()
        } else {
            format!("h{i}")
        };
        nodes.push(node(
            "Gemm",
            &[&cur, &w, &b],
            &y,
            vec![attr_int("transB", 1)],
        ));
        if i + 1 < count {
            let r = format!("r{i}");
            nodes.push(node("Relu", &[&y], &r, vec![]));
            cur = r;
        }
        n_in = out;
    }
    model(features as i64, nodes, inits)
}

fn invalid(bytes: &[u8]) -> String {
    match import_onnx(bytes) {
        Err(e @ ImportError::Invalid { .. }) => e.to_string(),
        other => panic!("expected ImportError::Invalid, got {other:?}"),
    }
}

/// Every element-wise operation is folded (into the scaler, or into the layers around it), and
/// the imported network computes what the graph computes (reference written out here in f64).
#[test]
fn element_wise_operations_are_folded_where_they_belong() {
    let w1 = [0.5, -1.0, 0.25, 2.0, 1.5, -0.5]; // [in 2, out 3], MatMul layout
    let b1 = [0.1, -0.2, 0.3];
    let w2 = [1.0, -2.0, 0.5, 0.25, -1.0, 3.0]; // [out 2, in 3], Gemm transB layout
    let b2 = [0.05, -0.05];
    let bn = (
        [1.5f32, 0.5],
        [0.1f32, -0.1],
        [0.2f32, -0.3],
        [4.0f32, 0.25],
    );
    let nodes = vec![
        node("Sub", &["x", "mean"], "s", vec![]),
        node("Div", &["s", "std"], "d", vec![]),
        node("MatMul", &["d", "w1"], "m", vec![]),
        node("Add", &["b1", "m"], "a", vec![]),
        node("Tanh", &["a"], "t", vec![]),
        node("Mul", &["t", "half"], "h", vec![]),
        node("Add", &["h", "shift"], "hs", vec![]),
        node(
            "Gemm",
            &["hs", "w2", "b2"],
            "g",
            vec![
                attr_int("transB", 1),
                attr_float("alpha", 2.0),
                attr_float("beta", 0.5),
            ],
        ),
        node(
            "BatchNormalization",
            &["g", "gamma", "beta", "mu", "var"],
            "bn",
            vec![attr_float("epsilon", 1e-3)],
        ),
        node("Flatten", &["bn"], "f", vec![attr_int("axis", 1)]),
        node("Dropout", &["f"], "dr", vec![]),
        node("Softmax", &["dr"], "y", vec![attr_int("axis", -1)]),
    ];
    let inits = vec![
        tensor("mean", &[2], &[1.0, -2.0]),
        tensor("std", &[1, 2], &[2.0, 4.0]),
        tensor("w1", &[2, 3], &w1),
        tensor("b1", &[3], &b1),
        tensor("half", &[], &[0.5]),
        tensor("shift", &[3], &[0.1, 0.2, -0.3]),
        tensor("w2", &[2, 3], &w2),
        tensor("b2", &[2], &b2),
        tensor("gamma", &[2], &bn.0),
        tensor("beta", &[2], &bn.1),
        tensor("mu", &[2], &bn.2),
        tensor("var", &[2], &bn.3),
    ];
    let imported = import_onnx(&model(2, nodes, inits)).unwrap();
    let FloatModel::Mlp(m) = &imported.model else {
        panic!()
    };
    assert_eq!(m.hidden(), vec![3]);
    assert_eq!(m.post, PostTransform::Softmax);
    let s = m.scaler.as_ref().unwrap();
    assert_eq!(
        (s.offset.clone(), s.scale.clone()),
        (vec![1.0, -2.0], vec![0.5, 0.25])
    );
    assert_eq!(
        m.task,
        OnnxTask::Classifier {
            labels: vec!["0".into(), "1".into()]
        }
    );
    let reference = |x: [f64; 2]| -> Vec<f64> {
        let d = [(x[0] - 1.0) / 2.0, (x[1] + 2.0) / 4.0];
        let hs: Vec<f64> = (0..3)
            .map(|o| {
                let a = d[0] * w1[o] as f64 + d[1] * w1[3 + o] as f64 + b1[o] as f64;
                a.tanh() * 0.5 + [0.1, 0.2, -0.3][o]
            })
            .collect();
        let z: Vec<f64> = (0..2)
            .map(|o| {
                let g = 2.0 * (0..3).map(|i| w2[o * 3 + i] as f64 * hs[i]).sum::<f64>()
                    + 0.5 * b2[o] as f64;
                (g - bn.2[o] as f64) / (bn.3[o] as f64 + 1e-3).sqrt() * bn.0[o] as f64
                    + bn.1[o] as f64
            })
            .collect();
        let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        e.iter().map(|v| v / e.iter().sum::<f64>()).collect()
    };
    for x in [[0.0, 0.0], [1.0, -2.0], [3.5, 1.25], [-4.0, 7.0]] {
        let p = imported.model.predict(&[x[0] as f32, x[1] as f32]);
        for (g, w) in p.scores.iter().zip(reference(x)) {
            assert!((*g as f64 - w).abs() < 1e-5, "{x:?}: {:?}", p.scores);
        }
    }

    // A scale of zero in front cannot be a scaler: folded into the first layer instead.
    let nodes = vec![
        node("Mul", &["x", "k"], "a", vec![]),
        node("Add", &["a", "c"], "b", vec![]),
        node("Gemm", &["b", "w", "bias"], "y", vec![]),
    ];
    let inits = vec![
        tensor("k", &[2], &[0.0, 2.0]),
        tensor("c", &[2], &[3.0, 1.0]),
        tensor("w", &[2, 1], &[1.0, 1.0]),
        tensor("bias", &[1], &[0.5]),
    ];
    let imported = import_onnx(&model(2, nodes, inits)).unwrap();
    let FloatModel::Mlp(m) = &imported.model else {
        panic!()
    };
    assert!(m.scaler.is_none());
    assert_eq!(m.task, OnnxTask::Regressor { targets: 1 });
    // y = 3 + (2 x1 + 1) + 0.5
    let p = imported.model.predict(&[10.0, 2.0]);
    assert_eq!(p.scores, vec![8.5]);
}

#[test]
fn malformed_networks_get_typed_errors() {
    let w = |name: &str, dims: &[i64]| {
        let n = dims.iter().product::<i64>() as usize;
        tensor(name, dims, &vec![0.5; n])
    };
    // Weights that do not chain: 4 -> 8, then a layer reading 5.
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Relu", &["h"], "r", vec![]),
            node("MatMul", &["r", "w2"], "y", vec![]),
        ],
        vec![w("w1", &[4, 8]), w("w2", &[5, 3])],
    ));
    assert!(e.contains("5 inputs applied to 8 columns"), "{e}");
    // The first layer disagrees with the declared input.
    let e = invalid(&model(
        3,
        vec![node("MatMul", &["x", "w1"], "y", vec![])],
        vec![w("w1", &[4, 2])],
    ));
    assert!(e.contains("4 inputs applied to 3 columns"), "{e}");
    // A bias of the wrong length, a bias vector of the wrong length for Add.
    let e = invalid(&model(
        4,
        vec![node("Gemm", &["x", "w1", "b"], "y", vec![])],
        vec![w("w1", &[4, 2]), w("b", &[3])],
    ));
    assert!(e.contains("bias"), "{e}");
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "m", vec![]),
            node("Add", &["m", "b"], "y", vec![]),
        ],
        vec![w("w1", &[4, 2]), w("b", &[3])],
    ));
    assert!(e.contains("3 values applied to 2 columns"), "{e}");
    // Raw data that does not match the dimensions.
    let mut bad = w("w1", &[4, 2]);
    bad.raw_data.pop();
    let e = invalid(&model(
        4,
        vec![node("MatMul", &["x", "w1"], "y", vec![])],
        vec![bad],
    ));
    assert!(e.contains("raw data"), "{e}");
    // A weight tensor of rank 3, a reference to nothing.
    invalid(&model(
        4,
        vec![node("MatMul", &["x", "w1"], "y", vec![])],
        vec![w("w1", &[4, 2, 1])],
    ));
    let e = invalid(&model(
        4,
        vec![node("MatMul", &["x", "nowhere"], "y", vec![])],
        vec![],
    ));
    assert!(e.contains("nowhere"), "{e}");
    // A residual connection, weights on the left, a reshape that changes the shape.
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Add", &["h", "h"], "y", vec![]),
        ],
        vec![w("w1", &[4, 4])],
    ));
    assert!(e.contains("residual"), "{e}");
    invalid(&model(
        4,
        vec![node("MatMul", &["w1", "x"], "y", vec![])],
        vec![w("w1", &[4, 4])],
    ));
    let mut inits = vec![w("w1", &[4, 4])];
    inits.push(int_tensor("shape", &[-1, 2, 2]));
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Reshape", &["h", "shape"], "y", vec![]),
        ],
        inits,
    ));
    assert!(e.contains("shape-preserving"), "{e}");
    // Relu on the output, Softmax in the middle, an activation before any layer.
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Relu", &["h"], "y", vec![]),
        ],
        vec![w("w1", &[4, 2])],
    ));
    assert!(e.contains("output layer ends in relu"), "{e}");
    let e = invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Softmax", &["h"], "s", vec![]),
            node("MatMul", &["s", "w2"], "y", vec![]),
        ],
        vec![w("w1", &[4, 2]), w("w2", &[2, 2])],
    ));
    assert!(e.contains("Softmax"), "{e}");
    invalid(&model(
        4,
        vec![
            node("Relu", &["x"], "r", vec![]),
            node("MatMul", &["r", "w1"], "y", vec![]),
        ],
        vec![w("w1", &[4, 2])],
    ));
    // A multi-label Sigmoid output, two inputs, transA.
    invalid(&model(
        4,
        vec![
            node("MatMul", &["x", "w1"], "h", vec![]),
            node("Sigmoid", &["h"], "y", vec![]),
        ],
        vec![w("w1", &[4, 3])],
    ));
    let mut two_inputs = ModelProto::decode(
        model(
            4,
            vec![node("MatMul", &["x", "w1"], "y", vec![])],
            vec![w("w1", &[4, 2])],
        )
        .as_slice(),
    )
    .unwrap();
    let g = two_inputs.graph.as_mut().unwrap();
    g.input.push(value_info("x2", &[None, Some(4)]));
    invalid(&two_inputs.encode_to_vec());
    let e = import_onnx(&model(
        4,
        vec![node("Gemm", &["x", "w1"], "y", vec![attr_int("transA", 1)])],
        vec![w("w1", &[4, 4])],
    ))
    .unwrap_err();
    assert!(
        matches!(e, ImportError::UnsupportedAttribute { ref attr, .. } if attr == "transA"),
        "{e}"
    );
    // No dense layer at all.
    assert_eq!(
        import_onnx(&model(4, vec![node("Relu", &["x"], "y", vec![])], vec![])),
        Err(ImportError::Invalid {
            op: "dense network".into(),
            detail: "a relu activation before the first dense layer".into()
        })
    );
    assert_eq!(
        import_onnx(&model(
            4,
            vec![node("Identity", &["x"], "y", vec![])],
            vec![]
        )),
        Err(ImportError::NoModel)
    );
}

#[test]
fn other_operators_and_oversized_networks_are_refused() {
    for op in [
        "LSTM",
        "Attention",
        "LayerNormalization",
        "AveragePool",
        "Conv",
    ] {
        let e = import_onnx(&model(4, vec![node(op, &["x"], "y", vec![])], vec![])).unwrap_err();
        assert!(
            matches!(&e, ImportError::UnsupportedOperator { op_type, .. } if op_type == op),
            "{e}"
        );
    }
    // Limits: hidden layers, width, features.
    assert!(import_onnx(&chain(4, 8, MAX_HIDDEN_LAYERS + 1)).is_ok());
    let e = import_onnx(&chain(4, 8, MAX_HIDDEN_LAYERS + 2)).unwrap_err();
    assert!(
        matches!(e, ImportError::NetworkTooLarge { value, .. } if value == MAX_HIDDEN_LAYERS + 1),
        "{e}"
    );
    assert!(import_onnx(&chain(4, MAX_WIDTH, 2)).is_ok());
    let e = import_onnx(&chain(4, MAX_WIDTH + 1, 2)).unwrap_err();
    assert!(matches!(e, ImportError::NetworkTooLarge { .. }), "{e}");
    let e = import_onnx(&chain(4097, 2, 2)).unwrap_err();
    assert!(
        matches!(e, ImportError::NetworkTooLarge { limit: 4096, .. }),
        "{e}"
    );
    // Composing wide layers that have no activation between them has a bounded cost.
    let nodes = vec![
        node("Gemm", &["x", "w1"], "h", vec![]),
        node("Gemm", &["h", "w2"], "y", vec![]),
    ];
    let bytes = model(
        2048,
        nodes,
        vec![
            tensor("w1", &[2048, 1024], &vec![0.0; 2048 * 1024]),
            tensor("w2", &[1024, 1024], &vec![0.0; 1024 * 1024]),
        ],
    );
    let e = import_onnx(&bytes).unwrap_err();
    assert!(
        matches!(e, ImportError::NetworkTooLarge { value, .. } if value == 1 << 31),
        "{e}"
    );
    // Consecutive dense layers with no activation between them are one layer.
    let nodes = vec![
        node("Gemm", &["x", "w1"], "h", vec![]),
        node("Gemm", &["h", "w2"], "y", vec![]),
    ];
    let bytes = model(
        3,
        nodes,
        vec![
            tensor("w1", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            tensor("w2", &[2, 1], &[1.0, -1.0]),
        ],
    );
    let FloatModel::Mlp(m) = import_onnx(&bytes).unwrap().model else {
        panic!()
    };
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.layers[0].weights, vec![-1.0, -1.0, -1.0]);
}

/// A damaged skl2onnx file: shapes that stop chaining, the classes and the output disagreeing,
/// and random corruption, all answered with an error (never a panic).
#[test]
fn damaged_networks_are_refused_without_panicking() {
    let (bytes, _) = fixture("bc-mlp-30-32-2");
    let original = ModelProto::decode(bytes.as_slice()).unwrap();
    let edit = |f: &dyn Fn(&mut GraphProto)| {
        let mut m = original.clone();
        f(m.graph.as_mut().unwrap());
        import_onnx(&m.encode_to_vec())
    };
    let e = edit(&|g| {
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "coefficient1")
            .unwrap();
        t.dims = vec![16, 2];
    })
    .unwrap_err();
    assert!(matches!(e, ImportError::Invalid { .. }), "{e}");
    let e = edit(&|g| {
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "classes")
            .unwrap();
        *t = int_tensor("classes", &[0, 1, 2]);
    })
    .unwrap_err();
    assert!(e.to_string().contains("3 class labels"), "{e}");

    // Deterministic byte flips over the whole file.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] ^= 1 << (next() % 8);
        }
        if let Ok(imported) = import_onnx(&b) {
            let n = imported.model.n_features();
            let _ = imported.model.predict(&vec![0.5; n]);
        }
    }
}
