//! # fhe-batch-train
//!
//! From a CSV file to a compiled model package:
//!
//! - [`data`]: labelled CSV reading, seeded splits, synthetic records drawn like the data;
//! - [`model`]: training with linfa (binary and multinomial logistic regression, linear
//!   regression), and compilation: per-feature affine quantization calibrated on the training
//!   data, integer weights, the compile-time noise and range proof, and a report of float
//!   accuracy, quantized accuracy and their agreement;
//! - [`import`]: one compile entry point for models imported from ONNX (linear models, tree
//!   ensembles, networks), scalers in front folded in by `fhe-batch-onnx`;
//! - [`metrics`]: regressors' error figures (MAE, RMSE, R^2), float against quantized.

pub mod data;
pub mod import;
pub mod metrics;
pub mod mlp;
pub mod model;
pub mod onnx;
pub mod trees;

pub use data::{Dataset, Target, Task};
pub use model::{LinearFloatModel, TrainError, TrainOptions, compile, train};
