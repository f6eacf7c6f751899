//! # fhe-batch-onnx
//!
//! Brings models trained in Python into fhe-batch: reads ONNX files as `skl2onnx` and
//! `onnxmltools` export them (LinearClassifier, LinearRegressor, TreeEnsembleClassifier,
//! TreeEnsembleRegressor: scikit-learn linear models, decision trees, random forests, gradient
//! boosting, XGBoost, LightGBM), with per-feature affine preprocessing in front (skl2onnx's
//! `Scaler` for StandardScaler, `Mul`/`Add` for MinMaxScaler, any `Sub`/`Add`/`Mul`/`Div` by
//! constants: kept as a [`Preprocess`] evaluated in f32 in front of a [`Linear`] model, whose
//! compiler folds it into the weights, and folded exactly into a [`TreeEnsemble`]'s thresholds
//! at import: each becomes ONNX Runtime's f32 boundary on the raw feature) and trivial
//! operations on the scores after (an identity `Mul` by 1 as LightGBM's converter writes it,
//! an affine map of a regressor's output folded into its leaves or weights;
//! [`Imported::folded`] says what was folded), and dense networks written with standard operators (scikit-learn's
//! `MLPClassifier` / `MLPRegressor` through skl2onnx, PyTorch `Linear` + activation stacks as
//! `torch.onnx.export` writes them: MatMul/Add or Gemm layers, Relu/Tanh/Sigmoid, a final
//! Softmax, a scaler in front, foldable batch norms; rules and limits in [`mlp`]) into a
//! [`FloatModel`] evaluated with ONNX Runtime's semantics, so an import is checked against the
//! exporter's own outputs before it is quantized. Preprocessing that is not affine per feature
//! (an `Imputer`, a `ColumnTransformer`'s encoders and column selection, an L2 `Normalizer`, a
//! `Binarizer`) is split off into a [`fhe_batch_core::model::ClientPrefix`] the data owner runs
//! before quantizing ([`Imported::prefix`]). Anything else (another operator such as a
//! convolution or pooling, a categorical split, a post-transform we cannot reproduce, a network
//! shape we cannot represent, preprocessing no prefix operator covers) is refused with an
//! [`ImportError`] that names it (and, for preprocessing, says what to do instead).
//!
//! The protobuf messages are declared by hand ([`proto`]) for `prost`: no protoc, no build
//! script. `infra/export_models.py` trains and exports the sample models in
//! `tests/fixtures/onnx`.

mod import;
pub mod mlp;
mod model;
mod prefix;
pub mod proto;

pub use import::{ImportError, Imported, MAX_ONNX_BYTES, MAX_TREE_DEPTH, import_onnx};
pub use mlp::{MAX_HIDDEN_LAYERS, MAX_WIDTH};
pub use model::{
    Activation, Cmp, Dense, ElemOp, FloatModel, FloatPrediction, Linear, Mlp, Node, OnnxTask,
    PostTransform, Preprocess, Scaler, Tree, TreeEnsemble,
};
