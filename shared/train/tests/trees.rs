//! Quantized tree ensembles from the exported scikit-learn and XGBoost models: the client's
//! thermometer bits reach the same leaf as the float comparisons on every held-out record, and
//! leaves quantized to what the encrypted score slots carry keep accuracy within one point of the float model.

use fhe_batch_core::tree::QNode;
use fhe_batch_onnx::{FloatModel, Node, import_onnx};
use fhe_batch_train::trees::{quantize_trees, quantize_with_range, tree_report};
use std::path::PathBuf;

fn load(name: &str) -> (fhe_batch_onnx::TreeEnsemble, Vec<(Vec<f32>, String)>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let FloatModel::Trees(e) = import_onnx(&bytes).unwrap().model else {
        panic!("{name} is not a tree ensemble")
    };
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap())
            .unwrap();
    let rows = exp["x"]
        .as_array()
        .unwrap()
        .iter()
        .zip(exp["y"].as_array().unwrap())
        .map(|(x, y)| {
            let x = x
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (x, y.as_str().unwrap().to_string())
        })
        .collect();
    (e, rows)
}

#[test]
fn thermometer_bits_reach_the_float_models_leaves() {
    for name in [
        "bc-tree-d4",
        "bc-rf-20x4",
        "bc-gb-20x4",
        "bc-xgb-20x4",
        "iris-rf-10x3",
        "bc-scaler-tree-d3",
        "bc-minmax-rf-10x3",
        "bc-lgbm-20x15",
        "bc-catboost-20x4",
        "iris-catboost-10x3",
    ] {
        let (e, rows) = load(name);
        let q = quantize_trees(&e).unwrap().model;
        for (x, _) in &rows {
            let bits = q.bits(x);
            for (ft, qt) in e.trees.iter().zip(&q.trees) {
                // Walk both trees side by side: same node at every step.
                let (mut i, mut j) = (0usize, 0usize);
                loop {
                    assert_eq!(i, j, "{name}");
                    match (&ft.nodes[i], &qt.nodes[j]) {
                        (Node::Leaf { .. }, QNode::Leaf { .. }) => break,
                        (
                            Node::Branch {
                                feature,
                                threshold,
                                cmp,
                                yes,
                                no,
                                ..
                            },
                            QNode::Branch {
                                bit,
                                yes_when,
                                yes: qy,
                                no: qn,
                            },
                        ) => {
                            let f_yes = cmp.holds(x[*feature], *threshold);
                            let q_yes = bits[*bit as usize] == *yes_when;
                            assert_eq!(f_yes, q_yes, "{name}");
                            i = if f_yes { *yes } else { *no };
                            j = (if q_yes { *qy } else { *qn }) as usize;
                        }
                        _ => panic!("{name}: shapes differ"),
                    }
                }
            }
        }
    }
}

#[test]
fn leaves_sized_to_the_noise_budget_stay_within_one_point_of_float_accuracy() {
    for (name, max_pbs) in [
        ("bc-tree-d4", 8),
        ("bc-rf-20x4", 160),
        ("bc-gb-20x4", 160),
        ("bc-xgb-20x4", 160),
        ("iris-rf-10x3", 70),
        ("bc-scaler-tree-d3", 8),
        ("bc-minmax-rf-10x3", 70),
        ("bc-lgbm-20x15", 160),
        ("iris-catboost-10x3", 100),
    ] {
        let (e, rows) = load(name);
        let c = quantize_trees(&e).unwrap();
        let r = tree_report(&e, &c, &rows);
        eprintln!("{name}: {r:?}");
        assert!(
            (r.float_accuracy - r.quantized_accuracy).abs() <= 0.01 + 1e-12,
            "{name}: {r:?}"
        );
        assert!(r.agreement >= 0.98, "{name}: {r:?}");
        assert!(
            r.max_depth <= 4 && r.pbs_per_record <= max_pbs,
            "{name}: {r:?}"
        );
        assert!(
            r.thermometer_bits > 0 && r.thermometer_bits <= 20 * 15,
            "{name}: {r:?}"
        );
    }
}

#[test]
fn leaf_values_use_the_full_range_and_plans_reproduce_the_reference() {
    let (e, _) = load("bc-rf-20x4");
    let q = quantize_with_range(&e, 31).unwrap();
    let spread = q
        .trees
        .iter()
        .map(|t| {
            let v: Vec<i64> = t
                .nodes
                .iter()
                .filter_map(|n| match n {
                    QNode::Leaf { values } => Some(values[0]),
                    _ => None,
                })
                .collect();
            v.iter().max().unwrap() - v.iter().min().unwrap()
        })
        .max()
        .unwrap();
    assert_eq!(spread, 31);
    assert!(quantize_with_range(&e, 0).is_err());
    // The bootstrap plan's slot sums, read out, equal the integer reference on every record.
    for name in [
        "bc-tree-d4",
        "bc-rf-20x4",
        "bc-gb-20x4",
        "bc-xgb-20x4",
        "iris-rf-10x3",
    ] {
        let (e, rows) = load(name);
        let c = quantize_trees(&e).unwrap();
        c.plan
            .validate(fhe_batch_train::trees::TREE_PARAMS)
            .unwrap();
        for (x, _) in &rows {
            let bits = c.model.bits(x);
            let slots = c.plan.eval_slots(&bits);
            assert!(slots.iter().all(|&s| s < 1 << c.plan.slot_bits), "{name}");
            assert_eq!(
                c.readout.scores(&slots),
                c.model.eval_plain(&bits),
                "{name}"
            );
        }
    }
}
