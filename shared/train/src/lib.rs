//! # fhe-batch-train
//!
//! From a CSV file to a compiled model package:
//!
//! - [`data`]: labelled CSV reading, seeded splits, synthetic records drawn like the data;
//! - [`model`]: training with linfa (binary and multinomial logistic regression, linear
//!   regression), and compilation: per-feature affine quantization calibrated on the training
//!   data, integer weights, the compile-time noise and range proof, and a report of float
//!   accuracy, quantized accuracy and their agreement.

pub mod data;
pub mod import;
pub mod mlp;
pub mod model;
pub mod onnx;
pub mod trees;

pub use data::{Dataset, Target, Task};
pub use model::{LinearFloatModel, TrainError, TrainOptions, compile, train};
