//! Neural networks through the pipeline core: an imported scikit-learn MLP (breast cancer,
//! 30-32-1 with its scaler) is compiled, its evaluation key published, a batch encrypted,
//! ingested, worked by two workers and decrypted; every decrypted score is within the proven
//! error of the integer reference and the predicted classes agree with it.

use crate::common::*;
use fhe_batch_core::format::ChunkLayout;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::IngestOutcome;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::FheEvaluator;
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_train::import::{ImportData, ImportOptions};
use fhe_batch_train::mlp::compile_mlp;

fn onnx(name: &str) -> fhe_batch_onnx::Mlp {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let fhe_batch_onnx::FloatModel::Mlp(m) = fhe_batch_onnx::import_onnx(&bytes).unwrap().model
    else {
        panic!("a network")
    };
    m
}

#[tokio::test]
async fn an_mlp_job_decrypts_within_the_proven_error_of_the_reference() {
    let ds = breast_cancer();
    let (calibration, eval) = ds.split(0.2, 42);
    let c = compile_mlp(
        &onnx("bc-mlp-30-32-2.onnx"),
        ImportData {
            all: &ds,
            calibration: &calibration,
            eval: &eval,
            evaluated_on: "holdout",
        },
        &ImportOptions::default(),
    )
    .unwrap();
    assert!(c.summary.report.quantized_score > 0.9, "{:?}", c.summary);
    assert_eq!(c.summary.pbs_per_record, 32);
    let pkg = c.package;
    let env = Env::new().await;
    publish(&env.store, &pkg).await;
    let key_bytes = EvalKey::generate(key()).to_bytes();
    let id = eval_key_id(&key_bytes);
    env.store
        .put(&layout::eval_key(&id), key_bytes)
        .await
        .unwrap();
    let rows: Vec<Vec<f64>> = (0..24).map(|i| eval.row(i).to_vec()).collect();
    let layout = ChunkLayout {
        records_per_chunk: 8,
        eval_key: Some(id),
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let (outcome, scores) = env.run_decrypted("mlp", &pkg, &rows, layout, 2).await;
    assert!(
        matches!(outcome, IngestOutcome::Queued { chunks: 3, .. }),
        "{outcome:?}"
    );
    let fhe_batch_core::model::ServerBody::NeuralNetwork(server) = &pkg.server.body else {
        panic!("a network")
    };
    let bound = c.proof.score_error[0];
    let mut agree = 0;
    for (r, &got) in rows.iter().zip(&scores) {
        let want = server.eval_plain(&pkg.client.columns(r))[0];
        assert!(
            ((got - want) as f64).abs() <= bound,
            "decrypted {got}, reference {want}, proven bound {bound}"
        );
        agree += usize::from(pkg.client.predict(&[got]).class == pkg.client.predict(&[want]).class);
    }
    eprintln!(
        "{agree}/{} predictions agree with the integer reference",
        rows.len()
    );
    assert!(agree >= rows.len() - 1, "{agree}/{}", rows.len());
}

/// Encrypts `rows`, evaluates them in one chunk with the worker's evaluator and decrypts the
/// scores (`rows x n_scores`).
fn run_chunk(pkg: &fhe_batch_core::model::ModelPackage, rows: &[Vec<f64>]) -> Vec<i64> {
    use fhe_batch_core::pipeline::ChunkEvaluator;
    static KEY: std::sync::OnceLock<(Vec<u8>, FheEvaluator)> = std::sync::OnceLock::new();
    let (bytes, evaluator) = KEY.get_or_init(|| {
        let bytes = EvalKey::generate(key()).to_bytes();
        let evaluator = FheEvaluator::new(None);
        evaluator
            .install_eval_key(&eval_key_id(&bytes), bytes.clone())
            .unwrap();
        (bytes, evaluator)
    });
    let id = eval_key_id(bytes);
    let cols: Vec<u64> = rows.iter().flat_map(|r| pkg.client.columns(r)).collect();
    let shape = fhe_batch_core::format::ChunkShape {
        input_columns: pkg.client.input_columns() as u32,
        records_per_chunk: rows.len() as u32,
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let payload =
        fhe_batch_fhe::glwe::encrypt_columns(key(), shape, pkg.client.column_bits(), &cols);
    let body = evaluator
        .evaluate(
            &pkg.server,
            &fhe_batch_core::pipeline::ChunkInput {
                payload: &payload,
                records: rows.len() as u32,
                records_per_chunk: rows.len() as u32,
                eval_key: Some(&id),
                encryption: fhe_batch_core::params::Encryption::SecretKey,
            },
        )
        .unwrap();
    let header = fhe_batch_core::format::ResultHeader {
        params: pkg.server.params,
        ciphertexts: pkg.server.output_ciphertexts(rows.len() as u32, 2048),
        chunk_index: 0,
        chunk_count: 1,
        records: rows.len() as u32,
        output_bits: pkg.server.output_bits(),
        model_id: pkg.manifest.model_id,
        key_fingerprint: key().fingerprint(),
        first_record: 0,
        binding: None,
    };
    fhe_batch_fhe::batch::decrypt_result(
        key(),
        &pkg.client,
        &pkg.manifest.model_id,
        &header.encode(&body),
    )
    .unwrap()
    .1
}

/// Every record's decrypted scores within the proven error of the integer reference; returns
/// how many predicted classes equal the reference's.
fn check_within_proof(c: &fhe_batch_train::mlp::CompiledMlp, rows: &[Vec<f64>]) -> usize {
    let pkg = &c.package;
    let fhe_batch_core::model::ServerBody::NeuralNetwork(server) = &pkg.server.body else {
        panic!("a network")
    };
    let k = pkg.client.n_scores();
    let scores = run_chunk(pkg, rows);
    let mut agree = 0;
    for (r, got) in rows.iter().zip(scores.chunks_exact(k)) {
        let want = server.eval_plain(&pkg.client.columns(r));
        for ((g, w), e) in got.iter().zip(&want).zip(&c.proof.score_error) {
            assert!(
                ((g - w) as f64).abs() <= *e,
                "decrypted {got:?}, reference {want:?}, proven bounds {:?}",
                c.proof.score_error
            );
        }
        agree += usize::from(pkg.client.predict(got).class == pkg.client.predict(&want).class);
    }
    agree
}

/// A random network: `features` inputs, hidden layers of the given widths with random
/// activations, `classes` outputs (softmax; one logistic score for two classes).
fn random_mlp(
    rng: &mut impl rand::Rng,
    features: usize,
    hidden: &[usize],
    classes: usize,
) -> fhe_batch_onnx::Mlp {
    use fhe_batch_onnx::{Activation, Dense, OnnxTask, PostTransform};
    let acts = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Identity,
        Activation::LeakyRelu(0.1),
    ];
    let scores = if classes == 2 { 1 } else { classes };
    let mut widths = vec![features];
    widths.extend_from_slice(hidden);
    widths.push(scores);
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| Dense {
            inputs: w[0],
            outputs: w[1],
            weights: (0..w[0] * w[1]).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            bias: (0..w[1]).map(|_| rng.gen_range(-0.5..0.5)).collect(),
            activation: if i + 2 == widths.len() {
                Activation::Identity
            } else {
                acts[rng.gen_range(0..acts.len())]
            },
        })
        .collect();
    fhe_batch_onnx::Mlp {
        task: OnnxTask::Classifier {
            labels: (0..classes).map(|c| c.to_string()).collect(),
        },
        n_features: features,
        scaler: None,
        layers,
        post: if classes == 2 {
            PostTransform::Logistic
        } else {
            PostTransform::Softmax
        },
    }
}

fn random_data(rng: &mut impl rand::Rng, features: usize, classes: usize, n: usize) -> Dataset {
    Dataset {
        feature_names: (0..features).map(|j| format!("x{j}")).collect(),
        target_name: "label".into(),
        x: (0..n * features)
            .map(|_| rng.gen_range(-3.0..3.0))
            .collect(),
        y: fhe_batch_train::data::Target::Classes {
            names: (0..classes).map(|c| format!("c{c}")).collect(),
            idx: (0..n).map(|_| rng.gen_range(0..classes)).collect(),
        },
    }
}

use fhe_batch_train::Dataset;
use proptest::prelude::*;
use rand::Rng;

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random small networks (1-2 hidden layers, every activation, 2-4 classes) on random
    /// records: every decrypted score lies within the proven error of the integer reference.
    #[test]
    fn random_networks_decrypt_within_the_proven_error(
        seed in any::<u64>(),
        features in 1usize..6,
        hidden in proptest::collection::vec(1usize..7, 1..3),
        classes in 2usize..5,
    ) {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mlp = random_mlp(&mut rng, features, &hidden, classes);
        let ds = random_data(&mut rng, features, classes, 64);
        let c = compile_mlp(
            &mlp,
            on_all(&ds),
            &ImportOptions::default(),
        )
        .unwrap();
        // Records inside and outside the calibration range (the client clamps them).
        let rows: Vec<Vec<f64>> = (0..6)
            .map(|_| (0..features).map(|_| rng.gen_range(-5.0..5.0)).collect())
            .collect();
        check_within_proof(&c, &rows);
    }
}

/// Held-out MNIST digits through both bundled networks: scores within the proven error, the
/// compile's plaintext figures within the bounds.
#[test]
fn mnist_networks_decrypt_held_out_digits_within_the_proven_error() {
    let all = fhe_batch_train::data::read_labelled_csv(
        &data_path("mnist-10k.csv.gz"),
        "label",
        fhe_batch_train::Task::Classification,
    )
    .unwrap();
    let calibration = all.select(&(0..8000).collect::<Vec<_>>());
    let test = all.select(&(8000..10000).collect::<Vec<_>>());
    for (name, digits) in [
        ("mnist-mlp-784-128-10.onnx", 4),
        ("mnist-mlp-784-128-64-10.onnx", 2),
    ] {
        let c = compile_mlp(
            &onnx(name),
            ImportData {
                all: &all,
                calibration: &calibration,
                eval: &test,
                evaluated_on: "test digits",
            },
            &ImportOptions::default(),
        )
        .unwrap();
        let r = &c.summary.report;
        eprintln!(
            "{name}: {:?}, simulated agreement {}",
            r, c.summary.simulated_agreement
        );
        assert_eq!(r.records, 2000);
        assert!(r.float_score - r.quantized_score <= 0.01, "{r:?}");
        assert!(c.summary.simulated_agreement >= 0.99, "{:?}", c.summary);
        // The accuracy to expect encrypted, noise included, stays within a point of float.
        let encrypted = c.summary.simulated_accuracy.expect("a classifier");
        assert!(r.float_score - encrypted <= 0.01, "{:?}", c.summary);
        let rows: Vec<Vec<f64>> = (0..digits).map(|i| test.row(i).to_vec()).collect();
        let agree = check_within_proof(&c, &rows);
        assert!(agree + 1 >= digits, "{agree}/{digits}");
    }
}

fn breast_cancer() -> Dataset {
    fhe_batch_train::data::read_labelled_csv(
        &data_path("breast_cancer.csv"),
        "label",
        fhe_batch_train::Task::Auto,
    )
    .unwrap()
}

/// Calibrates and reports on every record of `ds`.
fn on_all(ds: &Dataset) -> ImportData<'_> {
    ImportData {
        all: ds,
        calibration: ds,
        eval: ds,
        evaluated_on: "all records",
    }
}

/// A neuron whose incoming weights are all zero (scikit-learn leaves such dead neurons) has a
/// near-empty input range, so a huge scale; the neurons it would read from must still be
/// scaled for their other readers, and a dead first-layer neuron must read as its constant. Found on a freshly trained 784-128-64-10 network, whose
/// integer predictions were right on 10.6% of the test digits before the fix (float 95.55%).
#[test]
fn a_dead_neuron_does_not_coarsen_the_weights_of_its_layer() {
    let ds = breast_cancer();
    let data = on_all(&ds);
    let mut mlp = onnx("torch-mlp-bc-32-16-2.onnx");
    let healthy = compile_mlp(&mlp, data, &ImportOptions::default()).unwrap();
    // A dead neuron in each hidden layer: the first (reading the features) and the second.
    for layer in &mut mlp.layers[..2] {
        let inputs = layer.inputs;
        layer.weights[..inputs].iter_mut().for_each(|w| *w = 0.0);
        layer.bias[0] = -0.25;
    }
    let c = compile_mlp(&mlp, data, &ImportOptions::default()).unwrap();
    let (r, h) = (&c.summary.report, &healthy.summary.report);
    assert!(r.agreement >= 0.97, "{r:?}");
    assert!(
        r.quantized_score >= h.quantized_score - 0.02,
        "{r:?} vs {h:?}"
    );
    // Encrypted, the dead neurons stay within the proof.
    let rows: Vec<Vec<f64>> = (0..4).map(|i| ds.row(i).to_vec()).collect();
    check_within_proof(&c, &rows);
}

/// A server part whose neuron input no longer fits one bootstrap turn (a weight scaled up
/// after compiling) is refused when a worker reads it, and a network with a non-finite weight
/// is refused at compile time.
#[test]
fn networks_outside_the_proof_are_refused() {
    let ds = breast_cancer();
    let data = on_all(&ds);
    let mlp = onnx("bc-mlp-30-32-2.onnx");
    let c = compile_mlp(&mlp, data, &ImportOptions::default()).unwrap();
    let mut server = c.package.server.clone();
    let fhe_batch_core::model::ServerBody::NeuralNetwork(m) = &mut server.body else {
        panic!("a network")
    };
    for w in &mut m.hidden[0].neurons[0].weights {
        *w *= 4;
    }
    let err = fhe_batch_core::model::ServerModel::from_bytes(&server.to_bytes()).unwrap_err();
    assert!(err.to_string().contains("one turn"), "{err}");
    let mut bad = mlp.clone();
    bad.layers[1].weights[3] = f32::NAN;
    let err = compile_mlp(&bad, data, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("finite"), "{err}");
}

/// A small compiled network (3 features, 4 hidden neurons, 2 classes): a fuzz seed of the
/// network family's model files.
pub fn small_package() -> fhe_batch_core::model::ModelPackage {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let mlp = random_mlp(&mut rng, 3, &[4], 2);
    let ds = random_data(&mut rng, 3, 2, 32);
    compile_mlp(&mlp, on_all(&ds), &ImportOptions::default())
        .unwrap()
        .package
}
