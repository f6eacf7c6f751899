//! The `fhe-batch` binary, tested end to end on its real output.

mod common;
use common::{data, walk};

use std::path::Path;
use std::process::{Command, Output};

fn fhe_batch(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhe-batch"))
        .args(args)
        .current_dir(dir)
        .env_remove("FHE_BATCH_STORE")
        .output()
        .expect("runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = fhe_batch(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "fhe-batch {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail, and returns its stderr after checking it says `needle`.
fn fails(dir: &Path, args: &[&str], needle: &str) -> String {
    let out = fhe_batch(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "fhe-batch {args:?} succeeded");
    assert!(stderr.contains(needle), "fhe-batch {args:?}: {stderr}");
    stderr
}

#[test]
fn demo_runs_end_to_end_with_full_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["demo", "--dir", "demo"]);
    assert!(
        out.contains("agreement, quantized model    100.0% (150/150"),
        "{out}"
    );
    assert!(out.contains("SUCCEEDED 1/1 chunks"), "{out}");
    assert!(dir.path().join("demo/predictions.csv").exists());
    let preds = std::fs::read_to_string(dir.path().join("demo/predictions.csv")).unwrap();
    assert_eq!(preds.lines().count(), 151);
    assert!(preds.starts_with("record,label,p_setosa,p_versicolor,p_virginica"));
}

#[test]
fn the_documented_session_works_step_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let iris = data("iris.csv");
    let out = ok(d, &["train", "--data", &iris, "--out", "model"]);
    assert!(out.contains("accuracy"), "{out}");
    ok(d, &["keygen", "--out", "client.key"]);
    // A second keygen must not silently replace the key.
    assert!(
        !fhe_batch(d, &["keygen", "--out", "client.key"])
            .status
            .success()
    );
    ok(
        d,
        &[
            "encrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--input",
            &iris,
            "--out",
            "claims.fheb",
        ],
    );
    ok(d, &["publish", "--model", "model"]);
    ok(d, &["submit", "claims.fheb"]);
    let out = ok(d, &["status", "claims"]);
    assert!(out.contains("QUEUED"), "{out}");
    // Decrypting before the job ran states the job's state and what to do, writes nothing.
    let early = fhe_batch(
        d,
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--job",
            "claims",
            "--out",
            "early.csv",
        ],
    );
    assert!(!early.status.success());
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(
        err.contains("job claims is QUEUED") && err.contains("wait until"),
        "{err}"
    );
    assert!(!d.join("early.csv").exists());
    let out = fhe_batch(
        d,
        &[
            "decrypt", "--model", "model", "--job", "nobody", "--out", "x.csv",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no job nobody"), "{err}");
    let out = ok(d, &["run", "--workers", "2"]);
    assert!(out.contains("job claims: queued 1 chunks"), "{out}");
    assert!(
        out.contains("notification: job claims SUCCEEDED (1/1 chunks, 150 records)"),
        "{out}"
    );
    let out = ok(d, &["status", "claims", "--wait"]);
    assert!(out.contains("SUCCEEDED 1/1 chunks"), "{out}");
    let again = fhe_batch(d, &["submit", "claims.fheb"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("job claims already exists (SUCCEEDED)") && err.contains("--job claims-2"),
        "{err}"
    );
    let out = ok(d, &["status", "claims", "--json"]);
    assert!(out.contains("\"state\": \"SUCCEEDED\""), "{out}");
    ok(
        d,
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--job",
            "claims",
            "--out",
            "p.csv",
        ],
    );
    let preds = std::fs::read_to_string(d.join("p.csv")).unwrap();
    assert_eq!(preds.lines().count(), 151);
    // Results are bound to their job and batch: the same batch run again as job claims-b, then
    // claims's result copied over claims-b's, is refused (predictions would be attributed to
    // the wrong job's records), and nothing is written.
    ok(d, &["submit", "claims.fheb", "--job", "claims-b"]);
    ok(d, &["run"]);
    let bucket = d.join(".fhe-batch/bucket/results");
    std::fs::copy(
        bucket.join("claims/000000.fher"),
        bucket.join("claims-b/000000.fher"),
    )
    .unwrap();
    let swapped = fhe_batch(
        d,
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--job",
            "claims-b",
            "--out",
            "swapped.csv",
        ],
    );
    assert!(!swapped.status.success());
    let err = String::from_utf8_lossy(&swapped.stderr);
    assert!(err.contains("computed for another job"), "{err}");
    assert!(!d.join("swapped.csv").exists());
    // With the uploaded file named, every result must answer exactly that batch.
    let out = ok(
        d,
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--job",
            "claims",
            "--batch",
            "claims.fheb",
            "--out",
            "p2.csv",
        ],
    );
    assert!(out.contains("decrypted 150 predictions"), "{out}");
    // The secret key never entered the bucket.
    let key = std::fs::read(d.join("client.key")).unwrap();
    for entry in walk(&d.join(".fhe-batch/bucket")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !contains(&bytes, &key[36..100]),
            "key material in {}",
            entry.display()
        );
    }
}

#[test]
fn a_wrong_key_or_bad_input_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let iris = data("iris.csv");
    ok(d, &["train", "--data", &iris, "--out", "model"]);
    ok(d, &["keygen", "--out", "a.key"]);
    ok(d, &["keygen", "--out", "b.key"]);
    std::fs::write(d.join("bad.csv"), "sepal_length_cm,petal_width_cm\n1,2\n").unwrap();
    let out = fhe_batch(
        d,
        &[
            "encrypt", "--model", "model", "--key", "a.key", "--input", "bad.csv", "--out",
            "x.fheb",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no column named \"sepal_width_cm\""), "{err}");
    ok(
        d,
        &[
            "encrypt", "--model", "model", "--key", "a.key", "--input", &iris, "--out", "x.fheb",
        ],
    );
    ok(d, &["publish", "--model", "model"]);
    ok(d, &["submit", "x.fheb"]);
    ok(d, &["run"]);
    let out = fhe_batch(
        d,
        &[
            "decrypt", "--model", "model", "--key", "b.key", "--job", "x",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("use the key that encrypted the batch"),
        "{err}"
    );
    let out = fhe_batch(d, &["status", "../etc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid job id"));
    // A benchmark of no records is refused before any work (it used to panic).
    for flag in ["--mlp-records", "--tree-records"] {
        fails(d, &["bench", flag, "0"], "at least 1 record");
    }
}

/// A key file protected with a passphrase (`keygen --protect`) is useless without it: every
/// command that reads it asks for it, a wrong one is refused, the right one (from the
/// environment or a file) works end to end.
#[test]
fn a_passphrase_protected_key_needs_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let iris = data("iris.csv");
    let with = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fhe-batch"));
        c.args(args).current_dir(d).env_remove("FHE_BATCH_STORE");
        c.env_remove("FHE_BATCH_PASSPHRASE")
            .env_remove("FHE_BATCH_PASSPHRASE_FILE");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().expect("runs")
    };
    let pass = [("FHE_BATCH_PASSPHRASE", "a long passphrase of the owner")];
    ok(d, &["train", "--data", &iris, "--out", "model"]);
    let out = with(&[], &["keygen", "--out", "p.key", "--protect"]);
    assert!(!out.status.success(), "--protect without a passphrase");
    let out = with(&pass, &["keygen", "--out", "p.key", "--protect"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("passphrase-protected"));
    let encrypt = [
        "encrypt", "--model", "model", "--key", "p.key", "--input", &iris, "--out", "x.fheb",
    ];
    let out = with(&[], &encrypt);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passphrase-protected"), "{err}");
    let out = with(&[("FHE_BATCH_PASSPHRASE", "not it")], &encrypt);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(with(&pass, &encrypt).status.success());
    ok(d, &["publish", "--model", "model"]);
    ok(d, &["submit", "x.fheb"]);
    ok(d, &["run"]);
    std::fs::write(d.join("pass.txt"), "a long passphrase of the owner\n").unwrap();
    let file = d.join("pass.txt").display().to_string();
    let out = with(
        &[("FHE_BATCH_PASSPHRASE_FILE", &file)],
        &[
            "decrypt", "--model", "model", "--key", "p.key", "--job", "x", "--out", "p.csv",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preds = std::fs::read_to_string(d.join("p.csv")).unwrap();
    assert_eq!(preds.lines().count(), 151);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/onnx")
        .join(name)
        .display()
        .to_string()
}

/// `keygen` (k.key), then `input` encrypted for `model` as bc.fheb, published, submitted, run
/// and decrypted: the predictions CSV.
fn keygen_and_run(d: &Path, model: &str, input: &str) -> String {
    ok(d, &["keygen", "--out", "k.key"]);
    ok(
        d,
        &[
            "encrypt", "--model", model, "--key", "k.key", "--input", input, "--out", "bc.fheb",
        ],
    );
    ok(d, &["publish", "--model", model]);
    ok(d, &["submit", "bc.fheb"]);
    ok(d, &["run"]);
    ok(
        d,
        &[
            "decrypt", "--model", model, "--key", "k.key", "--job", "bc", "--out", "p.csv",
        ],
    );
    std::fs::read_to_string(d.join("p.csv")).unwrap()
}

#[test]
fn an_imported_scikit_learn_model_runs_encrypted_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bc = data("breast_cancer.csv");
    let out = ok(
        d,
        &[
            "import",
            "--onnx",
            &fixture("bc-logistic.onnx"),
            "--data",
            &bc,
            "--out",
            "model",
        ],
    );
    assert!(out.contains("LinearClassifier from skl2onnx"), "{out}");
    assert!(out.contains("quantized accuracy"), "{out}");
    let preds = keygen_and_run(d, "model", &bc);
    assert_eq!(preds.lines().count(), 570);
    // Other operators are named.
    let out = fhe_batch(
        d,
        &[
            "import",
            "--onnx",
            &fixture("unsupported-svc.onnx"),
            "--data",
            &data("iris.csv"),
            "--out",
            "m3",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported ONNX operator SVMClassifier"),
        "{err}"
    );
}

/// Pipelines with a scaler in front import, saying what was folded; regressors report MAE,
/// RMSE and R^2; preprocessing that is not affine is refused with what to do instead.
#[test]
fn pipelines_say_what_was_folded_and_regressors_report_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bc = data("breast_cancer.csv");
    let import = |onnx: &str, data: &str, out: &str| {
        ok(
            d,
            &[
                "import",
                "--onnx",
                &fixture(onnx),
                "--data",
                data,
                "--out",
                out,
            ],
        )
    };
    let out = import("bc-scaler-logistic.onnx", &bc, "lin");
    assert!(
        out.contains("StandardScaler (Scaler) folded into the weights"),
        "{out}"
    );
    let out = import("bc-minmax-rf-10x3.onnx", &bc, "rf");
    assert!(
        out.contains("MinMaxScaler (Mul, Add) folded into the thresholds"),
        "{out}"
    );
    assert!(out.contains("leaf resolution wanted"), "{out}");
    // The user's own leaf resolution: finer leaves take more tree groups; past what one slot
    // digit holds, this single-output forest leaves its merged layout (a leaf beside a pair
    // of leaves, or two pairs under one branch, in one bootstrap with one table) for
    // two-digit bootstraps, 20 -> 40.
    let bootstraps = |out: &str| {
        out.lines()
            .find_map(|l| {
                l.trim()
                    .split(" bootstraps per record")
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap()
    };
    let fine = ok(
        d,
        &[
            "import",
            "--onnx",
            &fixture("bc-minmax-rf-10x3.onnx"),
            "--data",
            &bc,
            "--out",
            "rf-fine",
            "--leaf-range",
            "1000",
        ],
    );
    assert!(!fine.contains("leaf resolution wanted"), "{fine}");
    assert!(fine.contains("tree group(s)"), "{fine}");
    assert_eq!(
        (bootstraps(&out), bootstraps(&fine)),
        (20, 40),
        "{out}\n{fine}"
    );
    assert!(out.contains("(1 lookup tables each)") && fine.contains("(2 lookup tables each)"));
    let groups = |out: &str| {
        out.lines()
            .find_map(|l| {
                l.split("; ")
                    .nth(1)?
                    .split(" tree group(s)")
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap()
    };
    assert!(groups(&fine) > groups(&out), "{out}\n{fine}");
    // Petal width from the other three iris measurements.
    let iris = std::fs::read_to_string(data("iris.csv")).unwrap();
    let csv: String = iris
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let c: Vec<&str> = l.split(',').collect();
            let label = if i == 0 { "label" } else { c[3] };
            format!("{},{},{},{label}\n", c[0], c[1], c[2])
        })
        .collect();
    std::fs::write(d.join("pw.csv"), csv).unwrap();
    let pw = d.join("pw.csv").display().to_string();
    for (onnx, out) in [
        ("iris-scaler-linear-regressor.onnx", "reg1"),
        ("iris-lgbm-regressor.onnx", "reg2"),
        ("iris-te5-rf-regressor.onnx", "reg3"),
        ("iris-catboost-regressor.onnx", "reg4"),
    ] {
        let text = import(onnx, &pw, out);
        assert!(
            text.contains("MAE") && text.contains("RMSE") && text.contains("R^2"),
            "{text}"
        );
        assert!(text.contains("quantized (integer reference)"), "{text}");
    }
    let out = fhe_batch(
        d,
        &[
            "import",
            "--onnx",
            &fixture("unsupported-kbins-pipeline.onnx"),
            "--data",
            &data("iris.csv"),
            "--out",
            "m4",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported preprocessing operator Less")
            && err.contains("apply the Less to the records before encrypting"),
        "{err}"
    );
}

/// A pipeline that imputes missing cells (SimpleImputer, StandardScaler, LogisticRegression on
/// breast cancer with 5% of the cells empty) imports with its preprocessing on the client, and
/// encrypts, runs and decrypts records with holes; a model without an imputer refuses the same
/// records, naming every one.
#[test]
fn a_pipeline_with_an_imputer_takes_records_with_missing_cells() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let holes = fixture("bc-missing.csv");
    let out = ok(
        d,
        &[
            "import",
            "--onnx",
            &fixture("bc-imputer-scaler-logistic.onnx"),
            "--data",
            &holes,
            "--out",
            "model",
        ],
    );
    assert!(
        out.contains("client-side preprocessing (Imputer, Scaler)")
            && out.contains("missing cells are imputed"),
        "{out}"
    );
    let preds = keygen_and_run(d, "model", &holes);
    assert_eq!(preds.lines().count(), 570);
    // The plain logistic regression has no imputer: every record with a hole is named.
    ok(
        d,
        &[
            "import",
            "--onnx",
            &fixture("bc-logistic.onnx"),
            "--data",
            &data("breast_cancer.csv"),
            "--out",
            "plain",
        ],
    );
    let out = fhe_batch(
        d,
        &[
            "encrypt", "--model", "plain", "--key", "k.key", "--input", &holes, "--out", "x.fheb",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&holes).unwrap();
    let with_holes = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').any(str::is_empty))
        .count();
    assert!(with_holes > 100, "{with_holes}");
    assert!(
        err.contains(&format!("{with_holes} records have missing values")),
        "{err}"
    );
}

/// An imported decision tree (breast cancer, depth 4) runs encrypted through the whole local
/// pipeline: evaluation key published once, batch in small chunks (format version 2), worker
/// bootstraps, and every decrypted prediction is ONNX Runtime's; the same records encrypted by
/// a producer with only the public key (format version 3) give the same predictions.
#[test]
fn an_imported_decision_tree_runs_encrypted_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bc = data("breast_cancer.csv");
    let out = ok(
        d,
        &[
            "import",
            "--onnx",
            &fixture("bc-tree-d4.onnx"),
            "--data",
            &bc,
            "--out",
            "tree",
        ],
    );
    assert!(out.contains("TreeEnsembleClassifier"), "{out}");
    assert!(out.contains("6 bootstraps per record"), "{out}");
    // The held-out records ONNX Runtime labelled, as a CSV with the data set's header.
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("bc-tree-d4.expected.json")).unwrap(),
    )
    .unwrap();
    let header = std::fs::read_to_string(&bc)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let mut csv = format!("{header}\n");
    for row in exp["x"].as_array().unwrap() {
        let vals: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{}", v.as_f64().unwrap() as f32))
            .collect();
        csv.push_str(&vals.join(","));
        csv.push_str(",0\n");
    }
    std::fs::write(d.join("holdout.csv"), csv).unwrap();
    ok(d, &["keygen", "--out", "k.key"]);
    // Without an evaluation key the client says what to do.
    fails(
        d,
        &[
            "encrypt",
            "--model",
            "tree",
            "--key",
            "k.key",
            "--input",
            "holdout.csv",
            "--out",
            "t.fheb",
        ],
        "publish-key",
    );
    let out = ok(d, &["publish-key", "--key", "k.key"]);
    assert!(out.contains("keys/") && out.contains("eval.key"), "{out}");
    ok(
        d,
        &[
            "encrypt",
            "--model",
            "tree",
            "--key",
            "k.key",
            "--input",
            "holdout.csv",
            "--out",
            "t.fheb",
            "--chunk-records",
            "50",
        ],
    );
    // A producer holds only the public key publish-key wrote (it names the evaluation key):
    // it encrypts the same records in a directory with no secret key, and cannot decrypt.
    let producer = d.join("producer");
    std::fs::create_dir(&producer).unwrap();
    std::fs::copy(d.join("k.pub"), producer.join("owner.pub")).unwrap();
    let tree = d.join("tree").display().to_string();
    let holdout = d.join("holdout.csv").display().to_string();
    let out = ok(
        &producer,
        &[
            "encrypt",
            "--model",
            &tree,
            "--public-key",
            "owner.pub",
            "--input",
            &holdout,
            "--out",
            "tp.fheb",
            "--chunk-records",
            "50",
        ],
    );
    assert!(out.contains("public-key encryption"), "{out}");
    let names: Vec<String> = walk(&producer)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    fails(
        &producer,
        &[
            "decrypt",
            "--model",
            &tree,
            "--key",
            "owner.pub",
            "--results",
            ".",
            "--out",
            "p.csv",
        ],
        "not an fhe-batch key file",
    );
    std::fs::copy(producer.join("tp.fheb"), d.join("tp.fheb")).unwrap();
    ok(d, &["publish", "--model", "tree"]);
    ok(d, &["submit", "t.fheb"]);
    ok(d, &["submit", "tp.fheb"]);
    let out = ok(d, &["run"]);
    assert!(out.contains("6 chunk results written"), "{out}");
    let mut runs = Vec::new();
    for job in ["t", "tp"] {
        let out = ok(d, &["status", job]);
        assert!(out.contains("SUCCEEDED"), "{out}");
        let csv = format!("{job}.csv");
        ok(
            d,
            &[
                "decrypt", "--model", "tree", "--key", "k.key", "--job", job, "--out", &csv,
            ],
        );
        runs.push(std::fs::read_to_string(d.join(&csv)).unwrap());
    }
    // The public-key batch decrypts to exactly the secret-key batch's predictions.
    assert_eq!(runs[0], runs[1]);
    let labels: Vec<String> = runs[0]
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    // ONNX Runtime's class k is the data set's k-th class name (sorted), as the import maps it.
    let names = ["benign", "malignant"];
    let ort: Vec<String> = exp["onnxruntime"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| names[v.as_u64().unwrap() as usize].to_string())
        .collect();
    assert_eq!(labels, ort);
    // On a multi-tenant stack the key goes under the tenant's prefix.
    let out = ok(d, &["publish-key", "--key", "k.key", "--tenant", "acme"]);
    assert!(out.contains("/keys/acme/"), "{out}");
    fails(
        d,
        &["publish-key", "--key", "k.key", "--tenant", "a.b"],
        "tenant id",
    );
    let out = ok(d, &["status", "--tenant", "acme"]);
    assert!(out.contains("no jobs"), "{out}");
}

/// Resubmission through the CLI: a batch refused at ingest (its model was not published) is
/// corrected by submitting under the same name (attempt 2), `retry` refuses it and a job that
/// succeeded, and a job whose chunk failed (its upload damaged in the bucket) is retried: once
/// more failing while the damage is there, then, repaired, succeeding with decryptable results.
#[test]
fn refused_batches_are_resubmitted_and_failed_jobs_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let iris = data("iris.csv");
    ok(d, &["train", "--data", &iris, "--out", "model"]);
    ok(d, &["keygen", "--out", "client.key"]);
    let encrypt = [
        "encrypt",
        "--model",
        "model",
        "--key",
        "client.key",
        "--input",
        &iris,
        "--out",
        "claims.fheb",
    ];
    ok(d, &encrypt);
    ok(d, &["submit", "claims.fheb"]);
    let out = ok(d, &["run"]);
    assert!(
        out.contains("job claims: FAILED") && out.contains("not published"),
        "{out}"
    );
    fails(d, &["retry", "claims"], "upload a corrected batch");
    // The model published, the same file submitted again runs as attempt 2.
    ok(d, &["publish", "--model", "model"]);
    let out = ok(d, &["submit", "claims.fheb"]);
    assert!(out.contains("runs as attempt 2"), "{out}");
    let out = ok(d, &["run"]);
    assert!(
        out.contains("job claims: attempt 2") && out.contains("queued 1 chunks"),
        "{out}"
    );
    assert!(
        out.contains("notification: job claims attempt 2 SUCCEEDED"),
        "{out}"
    );
    let out = ok(d, &["status", "claims"]);
    assert!(
        out.contains("SUCCEEDED 1/1 chunks, 150 records, attempt 2"),
        "{out}"
    );
    fails(d, &["retry", "claims"], "job claims is SUCCEEDED");
    let decrypt = |job: &str| {
        ok(
            d,
            &[
                "decrypt",
                "--model",
                "model",
                "--key",
                "client.key",
                "--job",
                job,
                "--out",
                "p.csv",
            ],
        )
    };
    decrypt("claims");

    // A chunk damaged in the bucket fails its job; retried while still damaged, it fails again
    // as attempt 2; repaired, attempt 3 succeeds.
    let good = std::fs::read(d.join("claims.fheb")).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(d.join("damaged.fheb"), &bad).unwrap();
    ok(d, &["submit", "damaged.fheb"]);
    let out = ok(d, &["run"]);
    assert!(out.contains("notification: job damaged FAILED"), "{out}");
    let again = fhe_batch(d, &["submit", "damaged.fheb"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("fhe-batch retry damaged"),
        "{err}"
    );
    let out = ok(d, &["retry", "damaged"]);
    assert!(
        out.contains("job damaged: attempt 2: queued 1 unfinished chunks again"),
        "{out}"
    );
    assert!(
        out.contains("notification: job damaged attempt 2 FAILED"),
        "{out}"
    );
    std::fs::write(d.join(".fhe-batch/bucket/inbox/damaged.fheb"), &good).unwrap();
    let out = ok(d, &["retry", "damaged"]);
    assert!(out.contains("attempt 2 chunk 0:"), "{out}");
    assert!(
        out.contains("notification: job damaged attempt 3 SUCCEEDED")
            && out.contains("SUCCEEDED 1/1 chunks, 150 records, attempt 3"),
        "{out}"
    );
    decrypt("damaged");
    let preds = std::fs::read_to_string(d.join("p.csv")).unwrap();
    assert_eq!(preds.lines().count(), 151);
}
