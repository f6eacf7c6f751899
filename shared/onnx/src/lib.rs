//! # fhe-batch-onnx
//!
//! Brings models trained in Python into fhe-batch: reads ONNX files as `skl2onnx` and
//! `onnxmltools` export them (LinearClassifier, LinearRegressor, TreeEnsembleClassifier,
//! TreeEnsembleRegressor: scikit-learn linear models, decision trees, random forests, gradient
//! boosting, XGBoost) into a [`FloatModel`] evaluated with ONNX Runtime's semantics, so an import
//! is checked against the exporter's own outputs before it is quantized. Anything else (another
//! operator, a categorical split, a post-transform we cannot reproduce) is refused with an
//! [`ImportError`] that names it.
//!
//! The protobuf messages are declared by hand ([`proto`]) for `prost`: no protoc, no build
//! script. `infra/export_models.py` trains and exports the sample models in
//! `tests/fixtures/onnx`.

mod import;
mod model;
pub mod proto;

pub use import::{ImportError, Imported, MAX_ONNX_BYTES, MAX_TREE_DEPTH, import_onnx};
pub use model::{
    Activation, Cmp, Dense, FloatModel, FloatPrediction, Linear, Mlp, Node, OnnxTask,
    PostTransform, Scaler, Tree, TreeEnsemble,
};
