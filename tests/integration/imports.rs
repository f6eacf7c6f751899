//! Models users bring with preprocessing in front (issue 12): scikit-learn pipelines whose
//! scaler the importer folds into the model (a StandardScaler in front of a logistic regression
//! and of a decision tree) go through `compile_imported`, the pipeline and decryption, and every
//! decrypted score equals the integer reference, computed from the raw records.

use crate::common::*;
use fhe_batch_core::format::ChunkLayout;
use fhe_batch_core::layout;
use fhe_batch_core::model::{ClientBody, ModelPackage};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_train::import::{ImportData, ImportOptions, compile_imported};

/// Imports and compiles a bundled breast-cancer pipeline, as `fhe-batch import` does.
fn compile(name: &str) -> (ModelPackage, Vec<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
    let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let imported = fhe_batch_onnx::import_onnx(&bytes).unwrap();
    let ds = fhe_batch_train::data::read_labelled_csv(
        &data_path("breast_cancer.csv"),
        "label",
        fhe_batch_train::Task::Classification,
    )
    .unwrap();
    let (calibration, eval) = ds.split(0.2, 42);
    let data = ImportData {
        all: &ds,
        calibration: &calibration,
        eval: &eval,
        evaluated_on: "holdout",
    };
    let c = compile_imported(&imported, data, &ImportOptions::default()).unwrap();
    (c.package, imported.folded)
}

/// Runs `records` breast-cancer rows through ingest, one worker and decryption; returns the
/// decrypted integer scores and the reference's.
async fn round_trip(pkg: &ModelPackage, records: usize) -> (Vec<i64>, Vec<i64>) {
    let ds = fhe_batch_train::data::read_labelled_csv(
        &data_path("breast_cancer.csv"),
        "label",
        fhe_batch_train::Task::Classification,
    )
    .unwrap();
    let rows: Vec<Vec<f64>> = (0..records).map(|i| ds.row(i).to_vec()).collect();
    round_trip_rows(pkg, &rows).await
}

/// Runs raw `rows` through ingest, one worker and decryption; returns the decrypted integer
/// scores and the reference's.
async fn round_trip_rows(pkg: &ModelPackage, rows: &[Vec<f64>]) -> (Vec<i64>, Vec<i64>) {
    let env = Env::new().await;
    publish(&env.store, pkg).await;
    let eval_key = match &pkg.client.body {
        ClientBody::TreeEnsemble(_) => {
            // The tree tests' evaluation key: same secret key, generated once per test binary.
            let t = crate::trees::tree();
            env.store
                .put(
                    &layout::eval_key(&crate::trees::key_id()),
                    t.key_bytes.clone(),
                )
                .await
                .unwrap();
            Some(crate::trees::key_id())
        }
        _ => None,
    };
    let layout = ChunkLayout {
        records_per_chunk: 16,
        eval_key,
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let (_, got) = env.run_decrypted("imported", pkg, rows, layout, 1).await;
    let want = rows
        .iter()
        .flat_map(|r| {
            let values = pkg
                .server
                .eval_plain(&pkg.client.record_columns(r).unwrap());
            match &pkg.client.body {
                ClientBody::TreeEnsemble(f) => {
                    let sums: Vec<u64> = values.iter().map(|&v| v as u64).collect();
                    f.slots.scores(&sums)
                }
                _ => values,
            }
        })
        .collect();
    (got, want)
}

#[tokio::test]
async fn a_scaler_and_logistic_pipeline_decrypts_to_the_integer_reference() {
    let (pkg, folded) = compile("bc-scaler-logistic");
    assert!(folded[0].contains("folded into the weights"), "{folded:?}");
    let (got, want) = round_trip(&pkg, 40).await;
    assert_eq!(got.len(), 40);
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_scaler_and_tree_pipeline_decrypts_to_the_integer_reference() {
    let (pkg, folded) = compile("bc-scaler-tree-d3");
    assert!(folded[0].contains("thresholds"), "{folded:?}");
    // 2 bootstraps per record (two pairs of leaves under each of the root's branches): 24
    // records stay cheap.
    let (got, want) = round_trip(&pkg, 24).await;
    assert_eq!(got.len(), 24 * pkg.client.family_impl().n_scores());
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catboost_export_decrypts_to_the_integer_reference() {
    // CatBoost's own ONNX export: 20 oblivious trees of depth 4 (160 bootstraps per record).
    let (pkg, _) = compile("bc-catboost-20x4");
    let (got, want) = round_trip(&pkg, 4).await;
    assert_eq!(got.len(), 4 * pkg.client.family_impl().n_scores());
    assert_eq!(got, want);
}

/// Compiles an imported model calibrated and reported on all of `ds`'s rows.
fn compile_on_all(
    imported: &fhe_batch_onnx::Imported,
    ds: &fhe_batch_train::data::Dataset,
) -> ModelPackage {
    let data = ImportData {
        all: ds,
        calibration: ds,
        eval: ds,
        evaluated_on: "all rows",
    };
    compile_imported(imported, data, &ImportOptions::default())
        .unwrap()
        .package
}

/// A fixture's held-out rows (missing cells NaN) as a labelled data set, and ONNX Runtime's
/// labels for them.
fn fixture_rows(name: &str) -> (fhe_batch_train::data::Dataset, Vec<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap())
            .unwrap();
    let text = |v: &serde_json::Value| v.to_string().trim_matches('"').to_string();
    let x: Vec<f64> = exp["x"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let labels: Vec<String> = exp["y"].as_array().unwrap().iter().map(text).collect();
    let mut names = labels.clone();
    names.sort();
    names.dedup();
    let idx = labels
        .iter()
        .map(|l| names.binary_search(l).unwrap())
        .collect();
    let ds = fhe_batch_train::data::Dataset {
        feature_names: exp["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect(),
        target_name: "label".into(),
        x,
        y: fhe_batch_train::data::Target::Classes { names, idx },
    };
    let ort = exp["onnxruntime"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    (ds, ort)
}

/// Pipelines whose preprocessing runs on the client (an imputer in front of a logistic
/// regression, fed records with holes; a ColumnTransformer's one-hot and ordinal encodings of a
/// site column in front of gradient boosting and a random forest), and an opset-5
/// `TreeEnsemble` read as a classifier through its ArgMax: records go through the client's
/// preprocessing, encryption, ingest, a worker and decryption, every decrypted score equals the
/// integer reference, and the tree ensembles' predictions are ONNX Runtime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_with_client_side_preprocessing_decrypt_to_the_integer_reference() {
    for (name, records) in [
        ("bc-imputer-scaler-logistic", 114),
        ("iris-site-onehot-gb", 12),
        ("iris-site-ordinal-rf", 12),
        ("iris-te5-rf-classifier", 12),
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
        let imported =
            fhe_batch_onnx::import_onnx(&std::fs::read(dir.join(format!("{name}.onnx"))).unwrap())
                .unwrap();
        let (ds, ort) = fixture_rows(name);
        let pkg = compile_on_all(&imported, &ds);
        assert_eq!(pkg.client.prefix.is_some(), !name.contains("te5"), "{name}");
        let rows: Vec<Vec<f64>> = (0..records).map(|i| ds.row(i).to_vec()).collect();
        let holes = rows.iter().filter(|r| r.iter().any(|v| v.is_nan())).count();
        assert_eq!(holes > 0, name.contains("imputer"), "{name}: {holes}");
        let (got, want) = round_trip_rows(&pkg, &rows).await;
        assert_eq!(got, want, "{name}");
        if name == "iris-site-onehot-gb" {
            // Its ColumnTransformer imputes nothing: records with holes are refused before
            // anything is encrypted, every one named.
            let mut raw: Vec<f64> = rows.iter().flatten().copied().collect();
            raw[5] = f64::NAN; // row 2, sepal length
            raw[5 * 7 + 4] = f64::NAN; // row 8, the site
            let e = pkg.client.records_columns(&raw).unwrap_err().to_string();
            assert!(
                e.starts_with("2 records cannot be preprocessed for this model: row 2 (feature 0 is missing after preprocessing")
                    && e.contains("; row 8 (a missing value reaches the Cast)"),
                "{e}"
            );
        }
        let n = pkg.client.n_scores();
        let agree = got
            .chunks_exact(n)
            .zip(&ort)
            .filter(|(s, o)| pkg.client.predict(s).label == **o)
            .count();
        if matches!(pkg.client.body, ClientBody::TreeEnsemble(_)) {
            assert_eq!(agree, records, "{name}");
        } else {
            // Quantized weights: within a few borderline records of the float model.
            assert!(agree * 100 >= records * 97, "{name}: {agree}/{records}");
        }
    }
}

/// Data frames with a text column (issue 12): skl2onnx exports one graph input per column and
/// the text one as a string tensor, read by a OneHotEncoder (`cats_strings`) in front of a
/// logistic regression and by an OrdinalEncoder's LabelEncoder (`keys_strings`) in front of
/// gradient boosting. The client reads the site names from its CSV as category codes: the
/// preprocessing gives ONNX Runtime's model inputs on every held-out row, bit for bit; rows
/// with sites the encoders never saw get ONNX Runtime's labels (no trimming, no case folding);
/// an empty cell is a missing value, refused and named; encrypted records decrypt to the
/// integer reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_columns_are_read_as_their_encoders_categories() {
    use fhe_batch_train::data::{CellRules, read_labelled_csv_with, read_records_with};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
    for name in ["iris-text-onehot-logistic", "iris-text-ordinal-gb"] {
        let imported =
            fhe_batch_onnx::import_onnx(&std::fs::read(dir.join(format!("{name}.onnx"))).unwrap())
                .unwrap();
        let exp: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let prefix = imported.prefix.clone().expect("a client-side prefix");
        let columns = imported.columns.clone().expect("one input per column");
        assert_eq!(columns.last().map(String::as_str), Some("site"), "{name}");
        assert_eq!(prefix.text.len(), 1, "{name}");
        assert_eq!(prefix.text[0].column, 4, "{name}");
        let ds = read_labelled_csv_with(
            &dir.join("iris-text.csv"),
            "label",
            fhe_batch_train::Task::Classification,
            CellRules::of(Some(&prefix)),
        )
        .unwrap();
        assert_eq!(ds.feature_names, columns, "{name}");
        // The model's inputs as the client computes them, and as ONNX Runtime did.
        let prefixed = |raw: &[f64]| -> Vec<f32> {
            prefix
                .apply(raw)
                .unwrap()
                .iter()
                .map(|&v| v as f32)
                .collect()
        };
        let f32s = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let rows: Vec<usize> = exp["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(
                prefixed(ds.row(r)),
                f32s(&exp["prefix"][k]),
                "{name}: row {r}"
            );
            let label = imported.predict_raw(ds.row(r)).unwrap().label.unwrap();
            assert_eq!(label, exp["onnxruntime"][k].to_string(), "{name}: row {r}");
        }
        // Sites the encoders never saw, read from a CSV as a data owner's would be.
        let unseen = &exp["unseen"];
        let sites: Vec<&str> = unseen["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let unseen_rows: Vec<usize> = unseen["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let csv = |skip_empty: bool| {
            let mut text = format!("{}\n", columns.join(","));
            for (&r, site) in unseen_rows.iter().zip(&sites) {
                if skip_empty && site.is_empty() {
                    continue;
                }
                let nums: Vec<String> = ds.row(r)[..4].iter().map(|v| v.to_string()).collect();
                text.push_str(&format!("{},\"{site}\"\n", nums.join(",")));
            }
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), text).unwrap();
            f
        };
        let rules = CellRules::of(Some(&prefix));
        let e = read_records_with(csv(false).path(), &columns, rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 records have missing values") && e.contains("3"),
            "{e}"
        );
        let raw = read_records_with(csv(true).path(), &columns, rules).unwrap();
        let mut k = 0;
        for (i, site) in sites.iter().enumerate() {
            if site.is_empty() {
                continue;
            }
            let record = &raw[k * 5..(k + 1) * 5];
            assert_eq!(
                prefixed(record),
                f32s(&unseen["prefix"][i]),
                "{name}: {site:?}"
            );
            let label = imported.predict_raw(record).unwrap().label.unwrap();
            assert_eq!(
                label,
                unseen["onnxruntime"][i].to_string(),
                "{name}: {site:?}"
            );
            k += 1;
        }
        // Encrypted: the client's codes through the pipeline decrypt to the integer reference.
        let pkg = compile_on_all(&imported, &ds);
        assert_eq!(pkg.client.prefix.as_ref(), Some(&prefix), "{name}");
        let enc: Vec<Vec<f64>> = rows[..12].iter().map(|&r| ds.row(r).to_vec()).collect();
        let (got, want) = round_trip_rows(&pkg, &enc).await;
        assert_eq!(got, want, "{name}");
    }
}
