//! Training and compilation on the bundled data sets.

use crate::common::*;
use fhe_batch_core::model::LinearTask;
use fhe_batch_core::params::ParamSet;
use fhe_batch_train::data::{Dataset, Target, read_labelled_csv, synthetic_classification};
use fhe_batch_train::{Task, TrainOptions, compile, train};

#[test]
fn iris_multinomial_is_accurate_and_quantization_agrees() {
    let (tr, ho) = iris().split(0.2, 42);
    let m = train(&tr, &TrainOptions::default()).unwrap();
    assert_eq!(m.task, LinearTask::MultinomialLogistic);
    let pkg = compile(&m, &tr, &ho, 8, ParamSet::Glwe2048TUniform17).unwrap();
    let r = &pkg.manifest.report;
    assert!(r.float_score >= 0.9, "{r:?}");
    assert!(r.quantized_score >= 0.9, "{r:?}");
    assert!(r.agreement >= 0.95, "{r:?}");
    // The client part holds no weights.
    let client = String::from_utf8(pkg.client_bytes.clone()).unwrap();
    assert!(!client.contains("weights") && !client.contains("bias"));
}

#[test]
fn breast_cancer_binary_is_accurate() {
    let ds = read_labelled_csv(&data_path("breast_cancer.csv"), "label", Task::Auto).unwrap();
    let (tr, ho) = ds.split(0.2, 42);
    let m = train(&tr, &TrainOptions::default()).unwrap();
    assert_eq!(m.task, LinearTask::BinaryLogistic);
    let pkg = compile(&m, &tr, &ho, 8, ParamSet::Glwe2048TUniform17).unwrap();
    let r = &pkg.manifest.report;
    assert!(r.float_score >= 0.93, "{r:?}");
    assert!(r.quantized_score >= 0.93, "{r:?}");
}

#[test]
fn linear_regression_recovers_a_linear_target() {
    let base = synthetic_classification(800, 5, 2, 3);
    let y: Vec<f64> = (0..base.len())
        .map(|i| {
            let x = base.row(i);
            3.0 * x[0] - 2.0 * x[1] + 0.5 * x[4] + 1.0 + 0.05 * ((i % 7) as f64 - 3.0)
        })
        .collect();
    let ds = Dataset {
        y: Target::Values(y),
        ..base
    };
    let (tr, ho) = ds.split(0.2, 1);
    let m = train(&tr, &TrainOptions::default()).unwrap();
    assert_eq!(m.task, LinearTask::Regression);
    let pkg = compile(&m, &tr, &ho, 8, ParamSet::Glwe2048TUniform17).unwrap();
    let r = &pkg.manifest.report;
    assert!(r.float_score > 0.99, "{r:?}");
    assert!(r.quantized_score > 0.95, "{r:?}");
}

#[test]
fn n_bits_out_of_range_is_refused() {
    let m = train(iris(), &TrainOptions::default()).unwrap();
    assert!(compile(&m, iris(), iris(), 1, ParamSet::Glwe2048TUniform17).is_err());
    assert!(compile(&m, iris(), iris(), 17, ParamSet::Glwe2048TUniform17).is_err());
    for bits in 2..=8 {
        compile(&m, iris(), iris(), bits, ParamSet::Glwe2048TUniform17).unwrap();
    }
}
