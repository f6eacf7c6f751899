//! Every exported sample model imports, and its float evaluation reproduces ONNX Runtime's
//! labels and probabilities (or predictions) on the held-out rows; unsupported models are
//! refused with the operator named. The files come from `infra/export_models.py`.

use fhe_batch_onnx::{FloatModel, ImportError, OnnxTask, import_onnx};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let onnx = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let expected = std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap();
    (onnx, serde_json::from_slice(&expected).unwrap())
}

/// A row of numbers; `null` (a missing cell) reads as NaN.
fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map_or(f32::NAN, |v| v as f32))
        .collect()
}

/// Imports `name` and compares with onnxruntime on every held-out row; returns the accuracy
/// of the labels against the true classes (classifiers).
fn check(name: &str, op: &str, scores_key: &str) -> Option<f64> {
    let (bytes, exp) = fixture(name);
    let imported = import_onnx(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(imported.op_type, op, "{name}");
    let model = &imported.model;
    let xs: Vec<Vec<f32>> = exp["x"].as_array().unwrap().iter().map(floats).collect();
    assert_eq!(imported.raw_features(), xs[0].len(), "{name}");
    let ort = &exp["onnxruntime"];
    let mut correct = 0;
    for (i, x) in xs.iter().enumerate() {
        let raw: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        // A client-side prefix reproduces ONNX Runtime's input to the model on every row.
        if let Some(p) = &imported.prefix {
            let got = p
                .apply(&raw)
                .unwrap_or_else(|e| panic!("{name} row {i}: {e}"));
            let want = floats(&exp["prefix"][i]);
            assert_eq!(got.len(), want.len(), "{name} row {i}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(*g as f32, *w, "{name} row {i}: {got:?} vs {want:?}");
            }
        }
        let p = imported
            .predict_raw(&raw)
            .unwrap_or_else(|e| panic!("{name} row {i}: {e}"));
        let want = floats(&ort[scores_key][i]);
        assert_eq!(p.scores.len(), want.len(), "{name} row {i}");
        for (g, w) in p.scores.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                "{name} row {i}: {:?} vs {want:?}",
                p.scores
            );
        }
        if let Some(label) = p.label {
            let ort_label = ort["label"][i].to_string();
            assert_eq!(label, ort_label.trim_matches('"'), "{name} row {i}");
            if label == exp["y"][i].as_str().unwrap() {
                correct += 1;
            }
        }
    }
    matches!(model.task(), OnnxTask::Classifier { .. }).then(|| correct as f64 / xs.len() as f64)
}

#[test]
fn scikit_learn_and_xgboost_models_match_onnx_runtime() {
    for (name, op) in [
        ("bc-logistic", "LinearClassifier"),
        ("bc-tree-d4", "TreeEnsembleClassifier"),
        ("bc-rf-20x4", "TreeEnsembleClassifier"),
        ("bc-gb-20x4", "TreeEnsembleClassifier"),
        ("bc-xgb-20x4", "TreeEnsembleClassifier"),
        // 50 stumps (depth 1), which share bootstraps four to one.
        ("bc-xgb-50x1", "TreeEnsembleClassifier"),
        ("iris-rf-10x3", "TreeEnsembleClassifier"),
        // Preprocessing folded in, LightGBM through onnxmltools.
        ("iris-scaler-logistic", "LinearClassifier"),
        ("bc-scaler-logistic", "LinearClassifier"),
        ("bc-scaler-tree-d3", "TreeEnsembleClassifier"),
        ("bc-minmax-rf-10x3", "TreeEnsembleClassifier"),
        ("bc-lgbm-20x15", "TreeEnsembleClassifier"),
        // CatBoost's own export (its ZipMap kept), binary and multiclass.
        ("bc-catboost-20x4", "TreeEnsembleClassifier"),
        ("iris-catboost-10x3", "TreeEnsembleClassifier"),
    ] {
        let producer = import_onnx(&fixture(name).0).unwrap().producer;
        assert!(
            !producer.contains('\n') && producer.len() <= 80,
            "{producer:?}"
        );
        let accuracy = check(name, op, "probabilities").unwrap();
        let (_, exp) = fixture(name);
        let float = exp["float_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - float).abs() < 1e-9,
            "{name}: {accuracy} vs {float}"
        );
    }
    for (name, op) in [
        ("iris-rf-regressor", "TreeEnsembleRegressor"),
        ("iris-linear-regressor", "LinearRegressor"),
        ("iris-scaler-linear-regressor", "LinearRegressor"),
        ("iris-minmax-rf-regressor", "TreeEnsembleRegressor"),
    ] {
        assert!(check(name, op, "variable").is_none());
    }
    assert!(check("iris-lgbm-regressor", "TreeEnsembleRegressor", "variable").is_none());
    assert!(
        check(
            "iris-catboost-regressor",
            "TreeEnsembleRegressor",
            "predictions"
        )
        .is_none()
    );
    // The opset-5 TreeEnsemble: one target (AVERAGE), and two targets (every tree once per
    // target).
    assert!(check("iris-te5-rf-regressor", "TreeEnsemble", "Y").is_none());
    assert!(check("iris-te5-rf-2targets", "TreeEnsemble", "Y").is_none());
    // ArgMax + Gather of the label after the scores: a classifier with the constant's labels.
    let accuracy = check("iris-te5-rf-classifier", "TreeEnsemble", "Y").unwrap();
    let (bytes, exp) = fixture("iris-te5-rf-classifier");
    // The hand-written graph compares in f32 where scikit-learn keeps f64 thresholds: ONNX
    // Runtime's labels (matched above on every row) may differ from scikit-learn's on a
    // record lying between the two.
    let float = exp["float_accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - float).abs() <= 1.0 / 45.0 + 1e-9,
        "{accuracy} vs {float}"
    );
    let imported = import_onnx(&bytes).unwrap();
    assert!(
        imported.folded[0].contains("read as a classifier (labels setosa, versicolor, virginica)"),
        "{:?}",
        imported.folded
    );
}

#[test]
fn pipelines_run_their_preprocessing_on_the_client() {
    // name, model operator, scores, what the prefix runs, raw columns -> model features.
    for (name, op, scores, ops, widths) in [
        (
            "bc-imputer-scaler-logistic",
            "LinearClassifier",
            "probabilities",
            "Imputer, Scaler",
            (30, 30),
        ),
        (
            "iris-site-onehot-gb",
            "TreeEnsembleClassifier",
            "probabilities",
            "ArrayFeatureExtractor, Scaler, OneHotEncoder, Concat",
            (5, 7),
        ),
        (
            "iris-site-ordinal-rf",
            "TreeEnsembleClassifier",
            "probabilities",
            "ArrayFeatureExtractor, LabelEncoder, Concat",
            (5, 5),
        ),
        (
            "iris-normalizer-mlp",
            "MLP",
            "probabilities",
            "Normalizer",
            (4, 4),
        ),
        (
            "iris-binarizer-logistic",
            "LinearClassifier",
            "probabilities",
            "Binarizer",
            (4, 4),
        ),
    ] {
        let (bytes, exp) = fixture(name);
        let imported = import_onnx(&bytes).unwrap();
        let p = imported.prefix.as_ref().expect(name);
        assert_eq!(p.describe(), ops, "{name}");
        assert_eq!((p.inputs, p.outputs().unwrap()), widths, "{name}");
        assert_eq!(p.imputes(), name.contains("imputer"), "{name}");
        let accuracy = check(name, op, scores).unwrap();
        let float = exp["float_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - float).abs() < 1e-9,
            "{name}: {accuracy} vs {float}"
        );
    }
    // The imputer fixture's held-out rows really have holes.
    let (_, exp) = fixture("bc-imputer-scaler-logistic");
    let holes = exp["x"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.as_array().unwrap().iter().any(Value::is_null))
        .count();
    assert!(holes > 20, "{holes}");
}

#[test]
fn damaged_opset_5_ensembles_are_refused() {
    let edit = editor("iris-te5-rf-regressor");
    let refused = |f: AttrEdit, needle: &str| {
        let e = edit(f).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    };
    refused(
        &|a| {
            if a.name == "nodes_modes" {
                a.t.as_mut().unwrap().raw_data[0] = 6;
            }
        },
        "BRANCH_MEMBER",
    );
    refused(
        &|a| {
            if a.name == "aggregate_function" {
                a.i = 3;
            }
        },
        "MAX",
    );
    refused(
        &|a| {
            if a.name == "nodes_truenodeids" {
                a.ints[1] = a.ints[0]; // a child points back up: not a tree
            }
        },
        "not a tree",
    );
    refused(
        &|a| {
            if a.name == "nodes_falsenodeids" {
                a.ints[0] = 1 << 40;
            }
        },
        "points to node",
    );
    refused(
        &|a| {
            if a.name == "leaf_targetids" {
                a.ints[0] = 1;
            }
        },
        "leaf target 1",
    );
    refused(
        &|a| {
            if a.name == "nodes_trueleafs" {
                a.ints.pop();
            }
        },
        "nodes_trueleafs",
    );
}

#[test]
fn what_was_folded_is_reported() {
    let folded = |name: &str| {
        let (bytes, _) = fixture(name);
        import_onnx(&bytes).unwrap().folded
    };
    let f = folded("bc-scaler-logistic");
    assert!(
        f.len() == 1 && f[0].contains("StandardScaler") && f[0].contains("weights"),
        "{f:?}"
    );
    let f = folded("bc-minmax-rf-10x3");
    assert!(
        f.len() == 1 && f[0].contains("MinMaxScaler (Mul, Add)") && f[0].contains("thresholds"),
        "{f:?}"
    );
    let f = folded("bc-lgbm-20x15");
    assert!(f.len() == 1 && f[0].contains("identity"), "{f:?}");
    assert!(folded("bc-rf-20x4").is_empty());
    // The scaler is gone from the trees: thresholds are on the raw features.
    let (bytes, _) = fixture("bc-scaler-tree-d3");
    let FloatModel::Trees(e) = import_onnx(&bytes).unwrap().model else {
        panic!()
    };
    assert_eq!(e.trees.len(), 1);
    assert!(e.trees[0].depth() <= 3);
    let (bytes, _) = fixture("bc-scaler-logistic");
    let FloatModel::Linear(l) = import_onnx(&bytes).unwrap().model else {
        panic!()
    };
    assert!(l.pre.is_some());
}

#[test]
fn ensembles_have_the_exported_shape() {
    let (bytes, _) = fixture("bc-rf-20x4");
    let FloatModel::Trees(m) = import_onnx(&bytes).unwrap().model else {
        panic!()
    };
    assert_eq!(m.trees.len(), 20);
    assert!(m.trees.iter().all(|t| t.depth() <= 4));
    assert!(m.trees.iter().map(|t| t.leaves()).sum::<usize>() <= 20 * 16);
    let (bytes, _) = fixture("bc-xgb-20x4");
    let imported = import_onnx(&bytes).unwrap();
    assert!(
        imported.producer.starts_with("OnnxMLTools"),
        "{}",
        imported.producer
    );
    let FloatModel::Trees(m) = imported.model else {
        panic!()
    };
    assert_eq!(m.trees.len(), 20);
    assert_eq!(m.base_values.len(), 1);
}

#[test]
fn unsupported_models_are_refused_naming_what_is_missing() {
    let (bytes, exp) = fixture("unsupported-svc");
    let op = exp["note"].as_str().unwrap();
    let e = import_onnx(&bytes).unwrap_err();
    assert!(
        matches!(&e, ImportError::UnsupportedOperator { op_type, .. } if op_type == op),
        "{e}"
    );
    assert!(e.to_string().contains(op), "{e}");
    // A KBinsDiscretizer's comparisons are no client-side operator: named, with what to do.
    let (bytes, exp) = fixture("unsupported-kbins-pipeline");
    let op = exp["note"].as_str().unwrap();
    let e = import_onnx(&bytes).unwrap_err();
    assert!(
        matches!(&e, ImportError::UnsupportedPreprocessing { op_type, .. } if op_type == op),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("apply the Less to the records before encrypting"),
        "{e}"
    );
    // Fixture `name` imported with its OneHotEncoder changed by `edit`.
    use fhe_batch_onnx::proto::{AttributeProto, ModelProto, NodeProto, attr_type};
    use prost::Message;
    let with_encoder = |name: &str, edit: &dyn Fn(&mut NodeProto)| {
        let mut m = ModelProto::decode(fixture(name).0.as_slice()).unwrap();
        let graph = m.graph.as_mut().unwrap();
        edit(
            graph
                .node
                .iter_mut()
                .find(|n| n.op_type == "OneHotEncoder")
                .unwrap(),
        );
        import_onnx(&m.encode_to_vec())
    };
    // Text categories on a number column (the graph input is not text): refused as malformed.
    let e = with_encoder("iris-site-onehot-gb", &|n| {
        n.attribute.push(AttributeProto {
            name: "cats_strings".into(),
            r#type: attr_type::STRINGS,
            strings: vec![b"north".to_vec(), b"south".to_vec()],
            ..Default::default()
        })
    })
    .unwrap_err();
    assert!(
        matches!(&e, ImportError::Invalid { op, detail } if op == "OneHotEncoder" && detail.contains("reads numbers")),
        "{e}"
    );
    // A text column read by anything but an encoder or a column selection: named, with what
    // to do instead.
    let e = with_encoder("iris-text-onehot-logistic", &|n| {
        n.op_type = "Binarizer".into();
        n.attribute.clear();
    })
    .unwrap_err();
    assert!(
        matches!(&e, ImportError::UnsupportedPreprocessing { op_type, .. } if op_type == "Binarizer"),
        "{e}"
    );
    assert!(
        e.to_string().contains("reads a text column")
            && e.to_string()
                .contains("encode the column as integers in the CSV"),
        "{e}"
    );
    assert!(matches!(
        import_onnx(b"not a protobuf \xff\xff"),
        Err(ImportError::Decode(_))
    ));
}

/// A change to one attribute of a model node.
type AttrEdit<'a> = &'a dyn Fn(&mut fhe_batch_onnx::proto::AttributeProto);

/// Imports fixture `name` with its model node's attributes changed by the function given.
fn editor(name: &str) -> impl Fn(AttrEdit) -> Result<fhe_batch_onnx::Imported, ImportError> {
    use fhe_batch_onnx::proto::ModelProto;
    use prost::Message;
    let original = ModelProto::decode(fixture(name).0.as_slice()).unwrap();
    move |f| {
        let mut m = original.clone();
        for a in &mut m.graph.as_mut().unwrap().node[0].attribute {
            f(a);
        }
        import_onnx(&m.encode_to_vec())
    }
}

#[test]
fn damaged_ensembles_are_refused() {
    let edit = editor("bc-tree-d4");
    let e = edit(&|a| {
        if a.name == "nodes_modes" {
            a.strings[0] = b"BRANCH_EQ".to_vec();
        }
    })
    .unwrap_err();
    assert!(e.to_string().contains("BRANCH_EQ"), "{e}");
    let e = edit(&|a| {
        if a.name == "post_transform" {
            a.s = b"PROBIT".to_vec();
        }
    })
    .unwrap_err();
    assert!(e.to_string().contains("PROBIT"), "{e}");
    let e = edit(&|a| {
        if a.name == "nodes_truenodeids" {
            a.ints[0] = 0; // the root points to itself
        }
    })
    .unwrap_err();
    assert!(matches!(e, ImportError::Invalid { .. }), "{e}");
    let e = edit(&|a| {
        if a.name == "nodes_values" {
            a.floats.pop();
        }
    })
    .unwrap_err();
    assert!(e.to_string().contains("nodes_values"), "{e}");
}
