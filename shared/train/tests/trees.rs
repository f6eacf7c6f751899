//! Quantized tree ensembles from the exported scikit-learn and XGBoost models: the client's
//! thermometer bits reach the same leaf as the float comparisons on every held-out record, and
//! leaves quantized to what the encrypted score slots carry keep accuracy within one point of the float model.

use fhe_batch_core::tree::QNode;
use fhe_batch_onnx::{FloatModel, Node, import_onnx};
use fhe_batch_train::trees::{
    SCORE_ERROR_TOLERANCE, choose_leaf_range, quantize_trees, quantize_trees_on,
    quantize_with_range, tree_report,
};
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
        ("bc-catboost-20x4", 160),
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

/// Without records to measure on, the sample ensembles are planned for at least
/// `DEFAULT_MIN_LEAF_RANGE` integers per tree. Without merged shapes their layout is the
/// single-slot one they had before tree groups (one group, the same leaf range); the layout
/// chosen needs no more bootstraps than that one, and single-output ensembles with a leaf
/// beside a pair of leaves take the merged layout (fewer bootstraps, still at least the range).
#[test]
fn small_ensembles_keep_the_single_slot_layout() {
    use fhe_batch_core::tree::plan_layout_as;
    use fhe_batch_train::trees::DEFAULT_MIN_LEAF_RANGE;
    for (name, range) in [
        ("bc-tree-d4", 65535),
        ("bc-rf-20x4", 15),
        ("bc-gb-20x4", 15),
        ("bc-xgb-20x4", 15),
        ("iris-rf-10x3", 12),
        ("bc-scaler-tree-d3", 65535),
        ("bc-minmax-rf-10x3", 168),
        ("bc-lgbm-20x15", 15),
    ] {
        let (e, _) = load(name);
        let c = quantize_trees(&e).unwrap();
        let plain = plan_layout_as(
            &c.model.trees,
            e.n_scores,
            fhe_batch_train::trees::TREE_PARAMS,
            DEFAULT_MIN_LEAF_RANGE,
            false,
        )
        .unwrap();
        assert_eq!((plain.groups, plain.leaf_range), (1, range), "{name}");
        assert!(c.layout.leaf_range >= DEFAULT_MIN_LEAF_RANGE, "{name}");
        assert!(c.layout.pbs_per_record <= plain.pbs_per_record, "{name}");
        assert_eq!(
            c.layout.merged,
            e.n_scores == 1 && c.layout.pbs_per_record < plain.pbs_per_record,
            "{name}"
        );
        assert_eq!(
            c.plan.score_slots as usize,
            e.n_scores * c.layout.digits as usize * c.layout.groups,
            "{name}"
        );
    }
}

/// Forests one score slot cannot hold (scikit-learn's default 100 trees and 200 trees, depth
/// capped at 8; 48 shallow trees): the leaf resolution measured on the records decides the
/// groups, the plan is proven, every record's slot sums read back to the integer reference, and
/// quantized accuracy stays within one point of float.
#[test]
fn large_forests_plan_in_groups_within_one_point_of_float() {
    for (name, trees, depth) in [
        ("bc-rf-48x3", 48, 3),
        ("bc-rf-100x8", 100, 8),
        ("bc-rf-200x8", 200, 8),
    ] {
        let (e, rows) = load(name);
        let x: Vec<Vec<f32>> = rows.iter().map(|(x, _)| x.clone()).collect();
        let (c, choice) = quantize_trees_on(&e, &x).unwrap();
        let r = tree_report(&e, &c, &rows);
        eprintln!("{name}: {r:?}, chosen {choice:?}");
        assert_eq!((r.trees, r.max_depth), (trees, depth), "{name}");
        assert!(c.layout.groups > 1, "{name}: {:?}", c.layout);
        assert!(c.layout.leaf_range >= choice.leaf_range, "{name}");
        assert_eq!(
            c.plan.score_slots as usize,
            c.layout.groups * c.layout.digits as usize
        );
        c.plan
            .validate(fhe_batch_train::trees::TREE_PARAMS)
            .unwrap();
        assert!(
            (r.float_accuracy - r.quantized_accuracy).abs() <= 0.01 + 1e-12,
            "{name}: {r:?}"
        );
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
    // The default depth-capped forests did not fit one slot: their single-slot layout, asked
    // for the coarsest leaves, still needs groups.
    for name in ["bc-rf-100x8", "bc-rf-200x8"] {
        let (e, _) = load(name);
        let c = fhe_batch_train::trees::quantize_trees_at(&e, 1).unwrap();
        assert!(c.layout.groups > 1, "{name}");
    }
}

/// The resolution chosen is the coarsest of the ladder that meets both criteria on the
/// records; the one below it fails one of them. Records of the wrong width are refused.
#[test]
fn the_leaf_resolution_is_the_coarsest_that_keeps_the_scores() {
    for name in ["bc-gb-20x4", "bc-xgb-20x4", "bc-rf-200x8", "iris-rf-10x3"] {
        let (e, rows) = load(name);
        let x: Vec<Vec<f32>> = rows.iter().map(|(x, _)| x.clone()).collect();
        let choice = choose_leaf_range(&e, &x).unwrap();
        let finest = &choice.trials[0];
        let ok = |t: &fhe_batch_train::trees::ResolutionTrial| {
            t.agreement >= finest.agreement
                && t.score_rms_error <= SCORE_ERROR_TOLERANCE * choice.score_sd
        };
        let chosen = choice.trials.last().unwrap();
        assert_eq!(chosen.leaf_range, choice.leaf_range, "{name}");
        assert!(ok(chosen), "{name}: {choice:?}");
        assert!(
            choice.trials[1..choice.trials.len() - 1]
                .iter()
                .all(|t| !ok(t)),
            "{name}: {choice:?}"
        );
        assert!(
            choice.trials[1..]
                .windows(2)
                .all(|w| w[1].leaf_range == 2 * w[0].leaf_range + 1)
        );
        let short: Vec<Vec<f32>> = x.iter().map(|r| r[1..].to_vec()).collect();
        assert!(choose_leaf_range(&e, &short).is_err(), "{name}");
        assert!(choose_leaf_range(&e, &[]).is_err(), "{name}");
    }
    // Gradient boosting's leaves need more than the single slot's 15: two groups.
    let (e, rows) = load("bc-gb-20x4");
    let x: Vec<Vec<f32>> = rows.iter().map(|(x, _)| x.clone()).collect();
    let (c, choice) = quantize_trees_on(&e, &x).unwrap();
    assert!(choice.leaf_range > 15 && c.layout.groups > 1, "{choice:?}");
}
