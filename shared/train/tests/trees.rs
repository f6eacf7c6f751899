//! Quantized tree ensembles from the exported scikit-learn and XGBoost models: the client's
//! thermometer bits reach the same leaf as the float comparisons on every held-out record, and
//! 8-bit leaves keep accuracy within one point of the float model.

use fhe_batch_core::tree::QNode;
use fhe_batch_onnx::{FloatModel, Node, import_onnx};
use fhe_batch_train::trees::{quantize_trees, tree_report};
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
    ] {
        let (e, rows) = load(name);
        let q = quantize_trees(&e, 8).unwrap();
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
fn eight_bit_leaves_stay_within_one_point_of_float_accuracy() {
    for (name, max_pbs) in [
        ("bc-tree-d4", 8),
        ("bc-rf-20x4", 160),
        ("bc-gb-20x4", 160),
        ("bc-xgb-20x4", 160),
        ("iris-rf-10x3", 40),
    ] {
        let (e, rows) = load(name);
        let q = quantize_trees(&e, 8).unwrap();
        let r = tree_report(&e, &q, &rows);
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
fn leaf_values_use_the_full_range_and_bad_widths_are_refused() {
    let (e, _) = load("bc-rf-20x4");
    let q = quantize_trees(&e, 6).unwrap();
    let largest = q
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter_map(|n| match n {
            QNode::Leaf { values } => values.iter().map(|v| v.abs()).max(),
            _ => None,
        })
        .max()
        .unwrap();
    assert_eq!(largest, 31);
    assert!(quantize_trees(&e, 1).is_err());
    assert!(quantize_trees(&e, 17).is_err());
}
