//! Tree ensembles evaluated on encrypted records: decryption equals the plaintext integer
//! reference exactly; the evaluation key goes through tfhe's safe, parameter-checked
//! deserialization; the noise constants of the compile-time proof are tfhe's own formulas.

use fhe_batch_core::ids::ModelId;
use fhe_batch_core::model::{
    ClientBody, ClientModel, CompileReport, ModelPackage, ServerBody, ServerModel,
};
use fhe_batch_core::params::Encryption;
use fhe_batch_core::tree::{self, ForestClient, QNode, QTree, Threshold, TreeModel};
use fhe_batch_fhe::forest::{EvalKey, PreparedEvalKey, eval_key_id};
use rand::{Rng, SeedableRng};

mod common;
use common::{PARAMS, keys};

/// A package around a quantized ensemble, as the compiler builds it.
fn package(model: &TreeModel, labels: Vec<String>) -> ModelPackage {
    package_in(model, labels, None)
}

/// [`package`] in a given layout (the planner's choice when `None`).
fn package_in(
    model: &TreeModel,
    labels: Vec<String>,
    layout: Option<&tree::Layout>,
) -> ModelPackage {
    let (plan, slots) = match layout {
        Some(l) => tree::build_plan_in(model, l, PARAMS).unwrap(),
        None => tree::build_plan(model, PARAMS).unwrap(),
    };
    let server = ServerModel::new(PARAMS, ServerBody::TreeEnsemble(plan.clone()));
    let client = ClientModel::new(
        PARAMS,
        (0..model.n_features).map(|j| format!("f{j}")).collect(),
        "y".into(),
        ClientBody::TreeEnsemble(ForestClient {
            thresholds: model.thresholds.clone(),
            score_slots: plan.score_slots,
            slot_bits: plan.slot_bits,
            slots,
            scale: 1.0,
            readout: tree::Readout {
                labels,
                base_values: vec![],
                post: tree::PostTransform::None,
                weights_positive: true,
            },
        }),
    );
    ModelPackage::build(server, client, CompileReport::default()).unwrap()
}

/// Encrypts bit records, evaluates through the worker's evaluator, decrypts.
fn run(pkg: &ModelPackage, bits: &[Vec<bool>], slots: usize) -> Vec<i64> {
    run_as(Encryption::SecretKey, pkg, bits, slots)
}

/// [`run`] with the records encrypted as `encryption` says.
fn run_as(
    encryption: Encryption,
    pkg: &ModelPackage,
    bits: &[Vec<bool>],
    slots: usize,
) -> Vec<i64> {
    let values: Vec<u64> = bits.iter().flatten().map(|&b| u64::from(b)).collect();
    common::run_chunk_as(encryption, pkg, &values, bits.len(), slots)
}

/// A random tree of depth <= `depth` over `bits` thermometer bits with leaves in `[-r, r]`.
fn random_tree(rng: &mut impl Rng, depth: usize, bits: u32, outputs: usize, r: i64) -> QTree {
    fn grow(
        rng: &mut impl Rng,
        nodes: &mut Vec<QNode>,
        depth: usize,
        bits: u32,
        outputs: usize,
        r: i64,
    ) -> u32 {
        let i = nodes.len();
        if depth == 0 || rng.gen_bool(0.2) {
            nodes.push(QNode::Leaf {
                values: (0..outputs).map(|_| rng.gen_range(-r..=r)).collect(),
            });
            return i as u32;
        }
        nodes.push(QNode::Leaf { values: vec![] });
        let bit = rng.gen_range(0..bits);
        let yes_when = rng.gen_bool(0.5);
        let yes = grow(rng, nodes, depth - 1, bits, outputs, r);
        let no = grow(rng, nodes, depth - 1, bits, outputs, r);
        nodes[i] = QNode::Branch {
            bit,
            yes_when,
            yes,
            no,
        };
        i as u32
    }
    let mut nodes = Vec::new();
    grow(rng, &mut nodes, depth, bits, outputs, r);
    QTree { nodes }
}

#[test]
fn random_forests_decrypt_to_the_integer_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // (trees, depth, outputs, records, slots, encryption): single LUTs (depth 5 and more),
    // many-LUT with two digits (one output, depth <= 4), several outputs, stumps packed into
    // shared bootstraps; partial and full chunks; records encrypted with the secret key or the
    // public key (with up to 341 records per chunk, all 6 bit columns share one public-key
    // GLWE).
    let (sk, pk) = (Encryption::SecretKey, Encryption::PublicKey);
    for (trees, depth, outputs, records, slots, encryption) in [
        (2, 4, 1, 24, 24, sk),
        (1, 6, 1, 9, 16, pk),
        (3, 3, 3, 7, 64, pk),
        (1, 1, 2, 3, 3, sk),
        (2, 4, 2, 5, 2048, pk),
        (6, 1, 1, 12, 12, sk),
    ] {
        let n_bits = 6u32;
        let thresholds = (0..n_bits)
            .map(|j| Threshold {
                feature: 0,
                value: j as f32,
                inclusive: false,
            })
            .collect();
        let mut model = TreeModel {
            n_features: 1,
            n_outputs: outputs as u32,
            thresholds,
            trees: (0..trees)
                .map(|_| random_tree(&mut rng, depth, n_bits, outputs, 1))
                .collect(),
            leaf_bits: 16,
            scale: 1.0,
        };
        // Leaves as wide as the layout allows.
        let layout = tree::plan_layout(&model.trees, outputs, PARAMS, 1).unwrap();
        let r = (layout.leaf_range / 2) as i64;
        for t in &mut model.trees {
            for n in &mut t.nodes {
                if let QNode::Leaf { values } = n {
                    values.iter_mut().for_each(|v| *v = rng.gen_range(-r..=r));
                }
            }
        }
        let labels = if outputs == 1 {
            vec![]
        } else {
            (0..outputs).map(|o| format!("c{o}")).collect()
        };
        let pkg = package(&model, labels);
        if depth == 1 && outputs == 1 {
            // Six stumps in one group: two bootstraps (four and two stumps).
            assert!(pkg.manifest.pbs_per_record <= 2, "{:?}", pkg.manifest);
        }
        let bits: Vec<Vec<bool>> = (0..records)
            .map(|_| (0..n_bits).map(|_| rng.gen_bool(0.5)).collect())
            .collect();
        assert!(pkg.manifest.public_key_batches);
        let got = run_as(encryption, &pkg, &bits, slots);
        let want: Vec<i64> = bits.iter().flat_map(|b| model.eval_plain(b)).collect();
        assert_eq!(got, want, "trees {trees} depth {depth} outputs {outputs}");
        // A single output: both layouts, a leaf beside a pair of leaves in one one-table
        // bootstrap (inputs up to 15) and every pair in a two-table one (two digit slots).
        if outputs == 1 && depth == 4 {
            for merged in [false, true] {
                let l = tree::plan_layout_as(&model.trees, 1, PARAMS, 1, merged).unwrap();
                assert_eq!((l.merged, l.functions), (merged, 2 - merged as u8), "{l:?}");
                if l.leaf_range < 2 * r as u64 {
                    continue;
                }
                let pkg = package_in(&model, vec![], Some(&l));
                let got = run_as(encryption, &pkg, &bits, slots);
                assert_eq!(got, want, "merged {merged}");
            }
        }
    }
}

/// Forests one score slot per output cannot hold: the trees are summed in groups, each into
/// its own slots, and the client adds the groups' decrypted sums. A synthetic 30-tree forest
/// with two outputs (one slot per output and group) and the 48-tree scikit-learn forest (one
/// slot per group; a leaf beside a pair of leaves shares their bootstrap) decrypt to the
/// integer reference on every record, and the forest's labels are ONNX Runtime's.
#[test]
fn grouped_forests_decrypt_to_the_integer_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let n_bits = 6u32;
    let model = TreeModel {
        n_features: 1,
        n_outputs: 2,
        thresholds: (0..n_bits)
            .map(|j| Threshold {
                feature: 0,
                value: j as f32,
                inclusive: false,
            })
            .collect(),
        trees: (0..30)
            .map(|_| random_tree(&mut rng, 2, n_bits, 2, 6))
            .collect(),
        leaf_bits: 16,
        scale: 1.0,
    };
    let pkg = package(&model, vec!["a".into(), "b".into()]);
    let ServerBody::TreeEnsemble(plan) = &pkg.server.body else {
        panic!("a forest")
    };
    assert!(plan.score_slots > 2, "{} slots", plan.score_slots);
    let bits: Vec<Vec<bool>> = (0..4)
        .map(|_| (0..n_bits).map(|_| rng.gen_bool(0.5)).collect())
        .collect();
    let got = run(&pkg, &bits, 4);
    let want: Vec<i64> = bits.iter().flat_map(|b| model.eval_plain(b)).collect();
    assert_eq!(got, want);

    use fhe_batch_onnx::{FloatModel, import_onnx};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let bytes = std::fs::read(dir.join("bc-rf-48x3.onnx")).unwrap();
    let FloatModel::Trees(e) = import_onnx(&bytes).unwrap().model else {
        panic!("a forest")
    };
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("bc-rf-48x3.expected.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<f32>> = exp["x"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let (c, _) = fhe_batch_train::trees::quantize_trees_on(&e, &rows).unwrap();
    assert!(
        c.layout.groups > 1 && c.layout.merged && c.layout.digits == 1,
        "{:?}",
        c.layout
    );
    let names = (0..e.n_features).map(|j| format!("f{j}")).collect();
    let pkg =
        fhe_batch_train::trees::package_forest(&e, &c, names, "y".into(), None, None, "").unwrap();
    // Records 0..3 of the held-out set (166 bootstraps each, 192 without merged shapes).
    let bits: Vec<Vec<bool>> = rows[..3].iter().map(|x| c.model.bits(x)).collect();
    let got = run(&pkg, &bits, 3);
    let want: Vec<i64> = bits.iter().flat_map(|b| c.model.eval_plain(b)).collect();
    assert_eq!(got, want);
    for (i, scores) in got.chunks_exact(pkg.client.n_scores()).enumerate() {
        let ort = exp["onnxruntime"]["label"][i].to_string();
        assert_eq!(
            pkg.client.predict(scores).label,
            ort.trim_matches('"'),
            "record {i}"
        );
    }
}

#[test]
fn evaluation_keys_are_checked_on_the_way_in() {
    let k = keys();
    let id = eval_key_id(&k.bytes);
    let key = EvalKey::from_bytes(&id, &k.bytes, PARAMS).unwrap();
    assert_eq!(key.owner(), k.secret.fingerprint());
    let _: PreparedEvalKey = key.prepare();
    // Another id, a flipped byte (the id no longer matches), a truncation: refused.
    let other = ModelId::from_bytes([1; 16]).to_string();
    let other: fhe_batch_core::ids::EvalKeyId = other.parse().unwrap();
    assert!(EvalKey::from_bytes(&other, &k.bytes, PARAMS).is_err());
    let mut flipped = k.bytes.clone();
    flipped[1000] ^= 1;
    assert!(EvalKey::from_bytes(&id, &flipped, PARAMS).is_err());
    let cut = &k.bytes[..k.bytes.len() / 2];
    assert!(EvalKey::from_bytes(&eval_key_id(cut), cut, PARAMS).is_err());
    // A key for another shortint parameter set (same message space, Gaussian noise, other
    // dimensions) fails tfhe's conformance check even when its
    // id is right.
    let other_params = tfhe::shortint::ClientKey::new(
        tfhe::shortint::parameters::PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128,
    );
    let wrong = EvalKey::from_parts(
        tfhe::shortint::CompressedServerKey::new(&other_params),
        key_packing(&k.bytes),
        k.secret.fingerprint(),
    );
    let bytes = wrong.to_bytes();
    let err = EvalKey::from_bytes(&eval_key_id(&bytes), &bytes, PARAMS)
        .err()
        .expect("a key for other parameters is refused");
    eprintln!("refused: {err}");
    eprintln!("evaluation key: {} bytes", k.bytes.len());
}

fn key_packing(bytes: &[u8]) -> tfhe::core_crypto::prelude::SeededLwePackingKeyswitchKeyOwned<u64> {
    let key = EvalKey::from_bytes(&eval_key_id(bytes), bytes, PARAMS).unwrap();
    key.parts().1.clone()
}

/// The constants of the compile-time noise proof in `fhe_batch_core::tree` are tfhe's formulas
/// evaluated for our parameter set.
#[test]
fn noise_constants_are_tfhes_formulas() {
    use tfhe::core_crypto::commons::noise_formulas::{
        centered_mean_shifted_modulus_switch::centered_binary_shifted_modulus_switch_additive_variance,
        lwe_keyswitch::keyswitch_additive_variance_132_bits_security_tuniform,
        lwe_packing_keyswitch::packing_keyswitch_additive_variance_132_bits_security_tuniform,
        lwe_programmable_bootstrap::pbs_variance_132_bits_security_tuniform_fft_mul,
    };
    use tfhe::core_crypto::prelude::*;
    let p = tfhe::shortint::parameters::PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128;
    let q = 2f64.powi(64);
    let pbs = pbs_variance_132_bits_security_tuniform_fft_mul(
        p.lwe_dimension,
        p.glwe_dimension,
        p.polynomial_size,
        p.pbs_base_log,
        p.pbs_level,
        53.0,
        q,
    );
    let pack = packing_keyswitch_additive_variance_132_bits_security_tuniform(
        LweDimension(2048),
        GlweDimension(1),
        PolynomialSize(2048),
        DecompositionBaseLog(fhe_batch_fhe::forest::PACKING_BASE_LOG),
        DecompositionLevelCount(fhe_batch_fhe::forest::PACKING_LEVEL),
        2048.0,
        q,
    );
    // Formulas give variances on the unit torus; ours are on the 2^64 one.
    let pbs_log2 = pbs.0.log2() + 128.0;
    let pack_log2 = pack.0.log2() + 128.0;
    eprintln!("pbs output 2^{pbs_log2:.3}, packing 2^{pack_log2:.3}");
    let noise = tree::BootstrapNoise::of(PARAMS);
    assert!(
        (pbs_log2 - noise.pbs_output_variance_log2).abs() < 0.01,
        "{pbs_log2}"
    );
    assert!(
        (pack_log2 - noise.packing_variance_log2).abs() < 0.01,
        "{pack_log2}"
    );
    let fresh = ((2f64.powi(35) + 1.0) / 6.0).log2();
    assert!((fresh - noise.fresh_variance_log2).abs() < 1e-6, "{fresh}");
    // What a bootstrap adds to its input before the blind rotation reads it (the networks'
    // reading noise): the keyswitch to the small key and the centred modulus switch to 2N.
    let ks = keyswitch_additive_variance_132_bits_security_tuniform(
        LweDimension(p.glwe_dimension.0 * p.polynomial_size.0),
        p.lwe_dimension,
        p.ks_base_log,
        p.ks_level,
        q,
        q,
    );
    let ms = centered_binary_shifted_modulus_switch_additive_variance(
        p.lwe_dimension,
        q,
        2.0 * p.polynomial_size.0 as f64,
    );
    let ksms_log2 = (ks.0 + ms.0).log2() + 128.0;
    eprintln!("keyswitch + modulus switch 2^{ksms_log2:.3}");
    assert!(
        (ksms_log2 - noise.keyswitch_modswitch_variance_log2).abs() < 0.01,
        "{ksms_log2}"
    );
}

/// The breast-cancer test sets of the issue (decision tree depth 4, random forest 20 x 4,
/// XGBoost 20 x 4), encrypted, evaluated by the worker's evaluator and decrypted: every record
/// equals the plaintext integer reference exactly, and the decrypted prediction is ONNX
/// Runtime's. The tree runs all 114 held-out records; the ensembles (166 bootstraps per record
/// together) the first 40, to keep CI within its budget: `fhe-batch bench --trees` checks 131
/// records of each the same way (docs/BENCHMARKS.md).
#[test]
fn breast_cancer_ensembles_decrypt_exactly_on_held_out_records() {
    use fhe_batch_onnx::{FloatModel, import_onnx};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    for (name, records) in [("bc-tree-d4", 114), ("bc-xgb-20x4", 40), ("bc-rf-20x4", 40)] {
        let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        let FloatModel::Trees(e) = import_onnx(&bytes).unwrap().model else {
            panic!("{name}")
        };
        let exp: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let rows: Vec<Vec<f64>> = exp["x"]
            .as_array()
            .unwrap()
            .iter()
            .take(records)
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect();
        let ort: Vec<String> = exp["onnxruntime"]["label"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string().trim_matches('"').to_string())
            .collect();
        let c = fhe_batch_train::trees::quantize_trees(&e).unwrap();
        let names = (0..e.n_features).map(|j| format!("f{j}")).collect();
        let pkg = fhe_batch_train::trees::package_forest(&e, &c, names, "y".into(), None, None, "")
            .unwrap();
        let bits: Vec<Vec<bool>> = rows
            .iter()
            .map(|x| pkg.client.columns(x).iter().map(|&b| b == 1).collect())
            .collect();
        let t = std::time::Instant::now();
        let got = run(&pkg, &bits, bits.len());
        let secs = t.elapsed().as_secs_f64();
        let want: Vec<i64> = bits.iter().flat_map(|b| c.model.eval_plain(b)).collect();
        assert_eq!(got, want, "{name}");
        let outputs = pkg.client.n_scores();
        for (i, scores) in got.chunks_exact(outputs).enumerate() {
            assert_eq!(
                pkg.client.predict(scores).label,
                ort[i],
                "{name} record {i}"
            );
        }
        eprintln!(
            "{name}: {} records exact, {} bootstraps each, {:.3} s per record",
            rows.len(),
            c.plan.pbs_per_record(),
            secs / rows.len() as f64
        );
    }
}
