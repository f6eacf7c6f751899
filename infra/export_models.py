#!/usr/bin/env python3
"""Train sample scikit-learn, XGBoost and LightGBM models and export them to ONNX, the way users bring
their own models to fhe-batch (`fhe-batch import`).

    python3 -m venv ~/.cache/fhe-batch/ml-venv
    ~/.cache/fhe-batch/ml-venv/bin/pip install -r infra/requirements-ml.txt
    ~/.cache/fhe-batch/ml-venv/bin/python infra/export_models.py [OUT_DIR] [--only pipelines]

`--only stumps` writes the stump ensemble; `--only pipelines` writes just the preprocessing pipelines and LightGBM models (see
`export_pipelines`), leaving the other fixtures as they are (their bytes drift between runs of
some converters). Writes OUT_DIR (default tests/fixtures/onnx) with, for each model, NAME.onnx and
NAME.expected.json: the held-out rows (features as float32, as ONNX runtimes see them), the
labels, and onnxruntime's outputs on them (labels and probabilities or predictions), which the
Rust importer's float evaluation must reproduce. Also writes models the importer must refuse
(operators it does not support), with the operator named in NAME.expected.json.

Classifiers are exported with `zipmap: False` (plain probability tensors). Every split is
seeded: the files are reproducible for the pinned package versions.

Neural networks (multi-layer perceptrons):

* scikit-learn `MLPClassifier` / `MLPRegressor` exported by skl2onnx (`bc-mlp-*`, `iris-mlp-*`,
  `mnist-mlp-*`). The MNIST models read the raw pixels 0..255: the network is trained on x / 255
  and exported behind a `MinMaxScaler` fitted on the two rows [0]*784 and [255]*784, which is
  exactly that division (skl2onnx writes a MinMaxScaler as `Mul` then `Add`, a StandardScaler
  as an ai.onnx.ml `Scaler`). Their expected.json holds only the first 200 test rows (to stay
  small), with `float_accuracy` on all 2,000 and `stored_rows_accuracy` on the 200.
* PyTorch-style graphs (`torch-mlp-*`). PyTorch cannot be installed here, so these graphs are
  built with `onnx.helper` the way `torch.onnx.export` (opset 17) writes an
  `nn.Sequential(Linear, ReLU, ..., Linear)`: `Gemm(alpha=1, beta=1, transB=1)` with the weight
  stored [out, in] (or `MatMul` with the weight stored [in, out] then `Add` of the bias),
  `Relu` nodes, input "input" and output "output" with a dynamic batch dimension "batch_size",
  the output layer's raw logits (no softmax node). Their weights are NOT trained by PyTorch:
  they are copied from scikit-learn `MLPClassifier`s trained on the breast-cancer training
  split. scikit-learn's binary classifier has one logistic output unit z; the 2-logit output
  layer is built as [-z/2, z/2] (weights and bias [-w, w] / 2), whose softmax is
  [1 - sigmoid(z), sigmoid(z)] and whose argmax is scikit-learn's label. The feature
  standardization is part of the graph (`Sub` of the means then `Div` or `Mul` by the
  deviations, as a module whose forward starts with `(x - mean) / std` exports), so the
  inputs are the raw features. `torch-mlp-bn-folded` has a `BatchNormalization` right after
  its first `Gemm` (`nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)` in eval mode), with
  statistics chosen so that the network computes the same function as `bc-mlp-30-32-2`. For
  these graphs `float_accuracy` is the accuracy of onnxruntime's argmax.
* Graphs the importer must refuse (`unsupported-conv`, `unsupported-maxpool`,
  `unsupported-batchnorm`, random seeded weights), the refused operator in their "note".
"""

import csv
import gzip
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from catboost import CatBoostClassifier, CatBoostRegressor
from lightgbm import LGBMClassifier, LGBMRegressor
from onnxmltools import convert_lightgbm, convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType as XgbFloat
from skl2onnx import to_onnx
from sklearn.ensemble import (GradientBoostingClassifier, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier

ROOT = Path(__file__).resolve().parent.parent


def load(name, label="label"):
    rows = list(csv.DictReader(open(ROOT / "data" / name)))
    features = [k for k in rows[0] if k != label]
    x = np.array([[float(r[f]) for f in features] for r in rows], dtype=np.float32)
    y = [r[label] for r in rows]
    return features, x, y


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})

    def plain(v):
        # A ZipMap output (CatBoost keeps one) is a list of {class: probability}: as rows.
        if isinstance(v, list):
            return [[d[k] for k in sorted(d)] for d in v]
        return v.tolist()

    return {o.name: plain(v) for o, v in zip(sess.get_outputs(), outs)}


def write(out, name, onx, features, x_test, y_test, float_accuracy=None, note="", extra=None):
    # Converters list the opset domains in set order (varies between runs): sort them so
    # the files are byte-for-byte reproducible.
    opsets = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    path = out / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    expected = {
        "model": name,
        "note": note,
        "features": features,
        "x": x_test.tolist(),
        "y": [str(v) for v in y_test],
        "onnxruntime": run_onnx(path, x_test),
    }
    if float_accuracy is not None:
        expected["float_accuracy"] = float_accuracy
    expected.update(extra or {})
    (out / f"{name}.expected.json").write_text(json.dumps(expected) + "\n")
    print(f"{name}: {path.stat().st_size} bytes" + (f", accuracy {float_accuracy:.4f}" if float_accuracy is not None else ""))


def main():
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        i = args.index("--only")
        only = args[i + 1]
        del args[i:i + 2]
    out = Path(args[0]) if args else ROOT / "tests/fixtures/onnx"
    out.mkdir(parents=True, exist_ok=True)
    if only == "pipelines":
        export_pipelines(out)
        return
    if only == "catboost":
        export_catboost(out)
        return
    if only == "te5":
        export_tree_ensemble_v5(out)
        return
    if only == "forests":
        export_forests(out)
        return
    if only == "prefixes":
        export_client_prefixes(out)
        return
    if only == "leaky":
        export_torch_leaky(out)
        return
    if only == "text":
        export_text_columns(out)
        return
    if only == "stumps":
        export_stumps(out)
        return
    if only is not None:
        sys.exit(f"--only {only}: only 'pipelines', 'prefixes', 'text', 'leaky', 'catboost', 'te5', 'forests' and 'stumps' are known")
    opts = {"zipmap": False}

    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))  # benign, malignant
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    bc = [
        ("bc-logistic", LogisticRegression(max_iter=5000)),
        ("bc-tree-d4", DecisionTreeClassifier(max_depth=4, random_state=0)),
        ("bc-rf-20x4", RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)),
        ("bc-gb-20x4", GradientBoostingClassifier(n_estimators=20, max_depth=4, random_state=0)),
    ]
    for name, model in bc:
        model.fit(xtr, ytr)
        onx = to_onnx(model, xtr[:1], options={id(model): opts}, target_opset={"": 17, "ai.onnx.ml": 3})
        write(out, name, onx, features, xte, yte, float(model.score(xte, yte)))
    xgb = XGBClassifier(n_estimators=20, max_depth=4, learning_rate=0.3, random_state=0,
                        tree_method="exact")
    xgb.fit(xtr, ytr)
    write(out, "bc-xgb-20x4", xgb_onnx(xgb, x.shape[1]), features, xte, yte,
          float(xgb.score(xte, yte)))

    # Multiclass and regression on Iris.
    features, x, y = load("iris.csv")
    classes = sorted(set(y))
    yi = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yi, test_size=0.3, random_state=42, stratify=yi)
    rf = RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0).fit(xtr, ytr)
    onx = to_onnx(rf, xtr[:1], options={id(rf): opts}, target_opset={"": 17, "ai.onnx.ml": 3})
    write(out, "iris-rf-10x3", onx, features, xte, yte, float(rf.score(xte, yte)))
    # Petal width from the other three measurements.
    xr, yr = x[:, :3], x[:, 3]
    xtr, xte, ytr, yte = train_test_split(xr, yr, test_size=0.3, random_state=42)
    reg = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0).fit(xtr, ytr)
    onx = to_onnx(reg, xtr[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    write(out, "iris-rf-regressor", onx, features[:3], xte, yte)
    lin = LinearRegression().fit(xtr, ytr)
    onx = to_onnx(lin, xtr[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    write(out, "iris-linear-regressor", onx, features[:3], xte, yte)

    # Models the importer must refuse, naming what it does not support.
    xtr, xte, ytr, yte = train_test_split(x, yi, test_size=0.3, random_state=42, stratify=yi)
    svc = SVC().fit(xtr, ytr)
    onx = to_onnx(svc, xtr[:1], options={id(svc): opts}, target_opset={"": 17, "ai.onnx.ml": 3})
    write(out, "unsupported-svc", onx, features, xte, yte, note="SVMClassifier")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)
    onx = to_onnx(pipe, xtr[:1], options={id(pipe.steps[-1][1]): opts},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    write(out, "iris-scaler-logistic", onx, features, xte, yte, float(pipe.score(xte, yte)))

    export_pipelines(out)
    export_catboost(out)
    export_tree_ensemble_v5(out)
    export_forests(out)
    export_networks(out)


def export_pipelines(out):
    """Preprocessing in front of linear models and tree ensembles (folded by the importer),
    LightGBM through onnxmltools, and pipelines whose preprocessing is refused (not affine per
    feature), the refused operator in their "note"."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    for name, pipe in [
        # skl2onnx: StandardScaler is an ai.onnx.ml Scaler, MinMaxScaler a Mul then an Add.
        ("bc-scaler-logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))),
        ("bc-scaler-tree-d3", make_pipeline(StandardScaler(),
                                            DecisionTreeClassifier(max_depth=3, random_state=0))),
        ("bc-minmax-rf-10x3", make_pipeline(MinMaxScaler(), RandomForestClassifier(
            n_estimators=10, max_depth=3, random_state=0))),
    ]:
        pipe.fit(xtr, ytr)
        onx = to_onnx(pipe, xtr[:1], options={id(pipe.steps[-1][1]): {"zipmap": False}},
                      target_opset=SKL_OPSET)
        write(out, name, onx, features, xte, yte, float(pipe.score(xte, yte)))
    lgbm = LGBMClassifier(n_estimators=20, num_leaves=15, max_depth=4, learning_rate=0.1,
                          random_state=0, deterministic=True, n_jobs=1, verbose=-1)
    lgbm.fit(xtr, ytr)
    onx = convert_lightgbm(lgbm, initial_types=[("input", XgbFloat([None, x.shape[1]]))],
                           zipmap=False, target_opset=15)
    write(out, "bc-lgbm-20x15", onx, features, xte, yte, float(lgbm.score(xte, yte)))
    export_client_prefixes(out)
    export_text_columns(out)

    # Regressors: petal width from the other three measurements (iris-rf-regressor's split).
    features, x, y = load("iris.csv")
    xr, yr = x[:, :3], x[:, 3]
    xtr, xte, ytr, yte = train_test_split(xr, yr, test_size=0.3, random_state=42)
    for name, model in [
        ("iris-scaler-linear-regressor", make_pipeline(StandardScaler(), LinearRegression())),
        ("iris-minmax-rf-regressor", make_pipeline(MinMaxScaler(), RandomForestRegressor(
            n_estimators=10, max_depth=4, random_state=0))),
    ]:
        model.fit(xtr, ytr)
        onx = to_onnx(model, xtr[:1], target_opset=SKL_OPSET)
        r2 = float(model.score(xte, yte))
        write(out, name, onx, features[:3], xte, yte, extra={"float_r2": r2})
        print(f"  R^2 {r2:.4f}")
    reg = LGBMRegressor(n_estimators=20, num_leaves=15, max_depth=4, learning_rate=0.1,
                        min_child_samples=5, random_state=0, deterministic=True, n_jobs=1,
                        verbose=-1)
    reg.fit(xtr, ytr)
    onx = convert_lightgbm(reg, initial_types=[("input", XgbFloat([None, 3]))], target_opset=15)
    r2 = float(reg.score(xte, yte))
    write(out, "iris-lgbm-regressor", onx, features[:3], xte, yte, extra={"float_r2": r2})
    print(f"  R^2 {r2:.4f}")


def model_input(onx):
    """The tensor the model reads: its classical operator's input, or the first dense layer's."""
    for n in onx.graph.node:
        if n.domain == "ai.onnx.ml" and n.op_type in (
                "LinearClassifier", "LinearRegressor", "TreeEnsembleClassifier",
                "TreeEnsembleRegressor", "TreeEnsemble"):
            return n.input[0]
    return next(n.input[0] for n in onx.graph.node if n.op_type in ("MatMul", "Gemm"))


def prefix_outputs(onx, x):
    """ONNX Runtime's values of the model's input tensor (what the client-side preprocessing
    must reproduce), by adding it to a copy of the graph's outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(onx)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(
        model_input(onx), onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([model_input(onx)], {sess.get_inputs()[0].name: x})[0].tolist()


def with_site(x, seed):
    """Iris with a categorical column: the (integer) site a record was measured at."""
    rng = np.random.default_rng(seed)
    site = rng.integers(1, 4, size=(x.shape[0], 1)).astype(np.float32)
    return np.hstack([x, site])


def export_client_prefixes(out):
    """Pipelines whose preprocessing is not affine per feature (issue 12): the importer splits
    it off as a client-side prefix the data owner runs before quantizing. Each fixture also
    stores ONNX Runtime's values of the model's input ("prefix"), and missing cells as null.
    Still refused: a KBinsDiscretizer (its comparisons are not a prefix operator)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import Binarizer, KBinsDiscretizer, OneHotEncoder, OrdinalEncoder

    def save(name, pipe, features, xte, yte, note=""):
        onx = to_onnx(pipe, xte[:1], options={id(pipe.steps[-1][1]): {"zipmap": False}},
                      target_opset=SKL_OPSET)
        prefix = prefix_outputs(onx, xte) if not note else None
        clean = np.where(np.isnan(xte), None, xte.astype(object)).tolist()
        write(out, name, onx, features, xte, yte,
              None if note else float(pipe.score(xte, yte)), note=note,
              extra={"prefix": prefix} if prefix else None)
        # JSON has no NaN: missing cells as null (the Rust loaders read null as missing).
        path = out / f"{name}.expected.json"
        exp = json.loads(path.read_text())
        exp["x"] = clean
        path.write_text(json.dumps(exp) + "\n")

    # Breast cancer with 5% of the cells missing, imputed by the pipeline's SimpleImputer.
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xm = x.copy()
    holes = np.random.default_rng(12).random(xm.shape) < 0.05
    xm[holes] = np.nan
    xtr, xte, ytr, yte = train_test_split(xm, yb, test_size=0.2, random_state=42, stratify=yb)
    pipe = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000))
    save("bc-imputer-scaler-logistic", pipe.fit(xtr, ytr), features, xte, yte)
    with open(out / "bc-missing.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(features + ["label"])
        for row, label in zip(xm, y):
            w.writerow(["" if np.isnan(v) else repr(float(v)) for v in row] + [label])

    # Iris with a site column: one-hot (ColumnTransformer) in front of gradient boosting, an
    # ordinal encoding (LabelEncoder) in front of a random forest.
    features, x, y = load("iris.csv")
    classes = sorted(set(y))
    yi = np.array([classes.index(v) for v in y])
    xs = with_site(x, 7)
    xtr, xte, ytr, yte = train_test_split(xs, yi, test_size=0.3, random_state=42, stratify=yi)
    onehot = ColumnTransformer([("num", StandardScaler(), [0, 1, 2, 3]),
                                ("site", OneHotEncoder(handle_unknown="ignore"), [4])])
    save("iris-site-onehot-gb", make_pipeline(onehot, GradientBoostingClassifier(
        n_estimators=10, max_depth=3, random_state=0)).fit(xtr, ytr), features + ["site"], xte,
        yte)
    ordinal = ColumnTransformer([("num", "passthrough", [0, 1, 2, 3]),
                                 ("site", OrdinalEncoder(), [4])])
    save("iris-site-ordinal-rf", make_pipeline(ordinal, RandomForestClassifier(
        n_estimators=10, max_depth=3, random_state=0)).fit(xtr, ytr), features + ["site"], xte,
        yte)
    xtr, xte, ytr, yte = train_test_split(x, yi, test_size=0.3, random_state=42, stratify=yi)
    save("iris-normalizer-mlp", make_pipeline(Normalizer(norm="l2"), MLPClassifier(
        hidden_layer_sizes=(8,), max_iter=3000, random_state=0)).fit(xtr, ytr), features, xte,
        yte)
    save("iris-binarizer-logistic", make_pipeline(Binarizer(threshold=1.5), LogisticRegression(
        max_iter=1000)).fit(xtr, ytr), features, xte, yte)
    save("unsupported-kbins-pipeline", make_pipeline(KBinsDiscretizer(
        n_bins=3, encode="ordinal", quantile_method="averaged_inverted_cdf"),
        LogisticRegression(max_iter=1000)).fit(xtr, ytr), features, xte[:20], yte[:20],
        note="Less")


def export_text_columns(out):
    """Data frames with a text column (issue 12): skl2onnx exports one graph input per column,
    the text one a string tensor that a OneHotEncoder (`cats_strings`) or an OrdinalEncoder's
    LabelEncoder (`keys_strings`) reads. The importer turns the text into category codes the
    client reads from its CSV. Writes `iris-text.csv` (Iris with a `site` column of place
    names), and per model the held-out rows' indices into it, ONNX Runtime's labels and model
    inputs on them, and its labels on rows whose site the encoders never saw."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    features, x, y = load("iris.csv")
    classes = sorted(set(y))
    yi = np.array([classes.index(v) for v in y])
    names = ["north", "south", "east"]
    site = [names[int(v) - 1] for v in with_site(x, 7)[:, 4]]
    df = pd.DataFrame(x.astype(np.float32), columns=features)
    df["site"] = site
    with open(out / "iris-text.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(features + ["site", "label"])
        for row, s, label in zip(x, site, y):
            w.writerow([repr(float(v)) for v in row] + [s, label])
    rows = np.arange(len(df))
    tr, te = train_test_split(rows, test_size=0.3, random_state=42, stratify=yi)
    unseen = df.iloc[te[:6]].copy()
    unseen["site"] = ["west", "", "North", "north ", "south", "zone 9"]

    def feeds(frame):
        return {c: (frame[[c]].to_numpy().astype(np.float32) if c != "site"
                    else frame[[c]].to_numpy().astype(object)) for c in frame.columns}

    def save(name, pipe):
        pipe.fit(df.iloc[tr], yi[tr])
        onx = to_onnx(pipe, df.iloc[:1], options={id(pipe.steps[-1][1]): {"zipmap": False}},
                      target_opset=SKL_OPSET)
        opsets = sorted(onx.opset_import, key=lambda o: o.domain)
        del onx.opset_import[:]
        onx.opset_import.extend(opsets)
        path = out / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probe = onnx.ModelProto()
        probe.CopyFrom(onx)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(
            model_input(onx), onnx.TensorProto.FLOAT, None))
        psess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        test = df.iloc[te]
        accuracy = float(pipe.score(test, yi[te]))
        expected = {
            "model": name,
            "features": features + ["site"],
            "rows": [int(i) for i in te],
            "y": [str(v) for v in yi[te]],
            "onnxruntime": sess.run(["label"], feeds(test))[0].tolist(),
            "prefix": psess.run([model_input(onx)], feeds(test))[0].tolist(),
            "unseen": {
                "sites": list(unseen["site"]),
                "rows": [int(i) for i in te[:6]],
                "onnxruntime": sess.run(["label"], feeds(unseen))[0].tolist(),
                "prefix": psess.run([model_input(onx)], feeds(unseen))[0].tolist(),
            },
            "float_accuracy": accuracy,
        }
        (out / f"{name}.expected.json").write_text(json.dumps(expected) + "\n")
        print(f"{name}: {path.stat().st_size} bytes, accuracy {accuracy:.4f}")

    save("iris-text-onehot-logistic", make_pipeline(ColumnTransformer(
        [("num", StandardScaler(), features),
         ("site", OneHotEncoder(handle_unknown="ignore"), ["site"])]),
        LogisticRegression(max_iter=1000)))
    save("iris-text-ordinal-gb", make_pipeline(ColumnTransformer(
        [("num", "passthrough", features), ("site", OrdinalEncoder(), ["site"])]),
        GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0)))


def export_forests(out):
    """Random forests with more trees than one score slot holds (issue 12: the planner sums
    groups of trees into separate score slots, which the client adds): `bc-rf-48x3` (small
    enough for CI's encrypted end-to-end test), scikit-learn's default forest (100 trees) with
    its depth capped at 8, and 200 trees of depth 8 (`fhe-batch import`, `fhe-batch bench
    --trees`). `--only forests` writes just these."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    for name, trees, depth in [("bc-rf-48x3", 48, 3), ("bc-rf-100x8", 100, 8),
                               ("bc-rf-200x8", 200, 8)]:
        rf = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0, n_jobs=1)
        rf.fit(xtr, ytr)
        onx = to_onnx(rf, xtr[:1], options={id(rf): {"zipmap": False}}, target_opset=SKL_OPSET)
        write(out, name, onx, features, xte, yte, float(rf.score(xte, yte)))


def xgb_onnx(xgb, n_features):
    """A fitted XGBClassifier as onnxmltools converts it (opset 15)."""
    return convert_xgboost(xgb, initial_types=[("input", XgbFloat([None, n_features]))],
                           target_opset=15)


def export_stumps(out):
    """Ensembles of stumps (depth 1), which share bootstraps four to one: XGBoost with 50
    stumps on breast cancer (`bc-xgb-50x1`, the same split and converter as `bc-xgb-20x4`).
    `--only stumps` writes just this one."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    xgb = XGBClassifier(n_estimators=50, max_depth=1, learning_rate=0.3, random_state=0,
                        tree_method="exact")
    xgb.fit(xtr, ytr)
    write(out, "bc-xgb-50x1", xgb_onnx(xgb, x.shape[1]), features, xte, yte,
          float(xgb.score(xte, yte)))


def export_catboost(out):
    """CatBoost's own ONNX export (`save_model(format="onnx")`): oblivious trees as an
    ai.onnx.ml TreeEnsembleClassifier (with CatBoost's ZipMap) or TreeEnsembleRegressor."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    tmp = out / "catboost.tmp.onnx"

    def export(model, name, features, xte, yte, **kw):
        model.save_model(str(tmp), format="onnx")
        onx = onnx.load(str(tmp))
        tmp.unlink()
        # CatBoost stamps each export with its training time and a random id: drop those two
        # so the files are reproducible (the trees and every other property are kept).
        kept = [p for p in onx.metadata_props if p.key not in ("train_finish_time", "model_guid")]
        del onx.metadata_props[:]
        onx.metadata_props.extend(kept)
        write(out, name, onx, features, xte, yte, **kw)

    clf = CatBoostClassifier(iterations=20, depth=4, random_seed=0, verbose=0, thread_count=1,
                         allow_writing_files=False)
    clf.fit(xtr, ytr)
    export(clf, "bc-catboost-20x4", features, xte, yte, float_accuracy=float(clf.score(xte, yte)))
    features, x, y = load("iris.csv")
    classes = sorted(set(y))
    yi = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yi, test_size=0.3, random_state=42, stratify=yi)
    multi = CatBoostClassifier(iterations=10, depth=3, loss_function="MultiClass", random_seed=0,
                               verbose=0, thread_count=1, allow_writing_files=False)
    multi.fit(xtr, ytr)
    export(multi, "iris-catboost-10x3", features, xte, yte,
           float_accuracy=float(multi.score(xte, yte)))
    xr, yr = x[:, :3], x[:, 3]
    xtr, xte, ytr, yte = train_test_split(xr, yr, test_size=0.3, random_state=42)
    reg = CatBoostRegressor(iterations=20, depth=3, random_seed=0, verbose=0, thread_count=1,
                         allow_writing_files=False)
    reg.fit(xtr, ytr)
    r2 = float(reg.score(xte, yte))
    export(reg, "iris-catboost-regressor", features[:3], xte, yte, extra={"float_r2": r2})
    print(f"  R^2 {r2:.4f}")


def tree_ensemble_v5(trees, n_features, n_targets, aggregate, classes=None):
    """The opset-5 `TreeEnsemble` (ai.onnx.ml 5) of fitted scikit-learn trees, written as newer
    converters write it: every tree once per target (a v5 leaf carries one target's weight),
    thresholds as a float tensor, modes as a uint8 tensor (0 = BRANCH_LEQ), children that are
    leaves flagged in nodes_trueleafs / nodes_falseleafs. `aggregate`: 0 AVERAGE, 1 SUM.
    With `classes` (a classifier's labels), the scores are the classes' probabilities and the
    graph ends as such converters end a classifier: an ArgMax over the scores, and a Gather of
    the label from a constant."""
    from onnx import TensorProto, helper, numpy_helper
    feat, split, tn, fn, tl, fl, roots, lt, lw = [], [], [], [], [], [], [], [], []
    for target in range(n_targets):
        for est in trees:
            t = est.tree_
            internal = [i for i in range(t.node_count) if t.children_left[i] != -1]
            index = {n: len(feat) + k for k, n in enumerate(internal)}
            leaf = {}
            for n in range(t.node_count):
                if t.children_left[n] == -1:
                    leaf[n] = len(lw)
                    lt.append(target)
                    v = t.value[n][0][target] if classes is not None else t.value[n][target][0]
                    lw.append(float(v))
            roots.append(index[0])
            for n in internal:
                feat.append(int(t.feature[n]))
                split.append(float(t.threshold[n]))
                for child, ids, leafs in ((t.children_left[n], tn, tl),
                                          (t.children_right[n], fn, fl)):
                    if child in leaf:
                        ids.append(leaf[child])
                        leafs.append(1)
                    else:
                        ids.append(index[child])
                        leafs.append(0)
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", name="TreeEnsemble",
        n_targets=n_targets, aggregate_function=aggregate, post_transform=0, tree_roots=roots,
        nodes_featureids=feat,
        nodes_splits=numpy_helper.from_array(np.array(split, dtype=np.float32)),
        nodes_modes=numpy_helper.from_array(np.zeros(len(feat), dtype=np.uint8)),
        nodes_truenodeids=tn, nodes_falsenodeids=fn, nodes_trueleafs=tl, nodes_falseleafs=fl,
        leaf_targetids=lt, leaf_weights=numpy_helper.from_array(np.array(lw, dtype=np.float32)))
    nodes, outputs, constants = [node], [], []
    if classes is not None:
        nodes.append(helper.make_node("ArgMax", ["Y"], ["index"], axis=1, keepdims=0,
                                      name="ArgMax"))
        nodes.append(helper.make_node("Gather", ["classes", "index"], ["label"], axis=0,
                                      name="Gather"))
        constants.append(numpy_helper.from_array(np.array(classes, dtype=object), "classes"))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.STRING, [None]))
    outputs.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_targets]))
    graph = helper.make_graph(
        nodes, "tree_ensemble_v5",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        outputs, initializer=constants)
    onx = helper.make_model(graph, producer_name="fhe-batch export_models.py (TreeEnsemble v5)",
                            opset_imports=[helper.make_opsetid("", 21),
                                           helper.make_opsetid("ai.onnx.ml", 5)])
    onx.ir_version = 10
    onnx.checker.check_model(onx)
    return onx


def export_tree_ensemble_v5(out):
    """Random forests as the opset-5 TreeEnsemble: petal width from the other three iris
    measurements (AVERAGE, one target), petal length and width from the sepal measurements
    (two targets), and the species (a classifier: ArgMax over the class scores, Gather of the
    label)."""
    features, x, y = load("iris.csv")
    xr, yr = x[:, :3], x[:, 3]
    xtr, xte, ytr, yte = train_test_split(xr, yr, test_size=0.3, random_state=42)
    rf = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0).fit(xtr, ytr)
    r2 = float(rf.score(xte, yte))
    write(out, "iris-te5-rf-regressor", tree_ensemble_v5(rf.estimators_, 3, 1, 0), features[:3],
          xte, yte, extra={"float_r2": r2})
    print(f"  R^2 {r2:.4f}")
    xs, ys = x[:, :2], x[:, 2:4]
    xtr, xte, ytr, yte = train_test_split(xs, ys, test_size=0.3, random_state=42)
    rf2 = RandomForestRegressor(n_estimators=6, max_depth=3, random_state=0).fit(xtr, ytr)
    onx = tree_ensemble_v5(rf2.estimators_, 2, 2, 0)
    write(out, "iris-te5-rf-2targets", onx, features[:2], xte, [list(r) for r in yte],
          extra={"float_r2": float(rf2.score(xte, yte))})
    # A classifier: probabilities as the TreeEnsemble's scores (AVERAGE), then ArgMax + Gather.
    xtr, xte, ytr, yte = train_test_split(x, np.array(y), test_size=0.3, random_state=42,
                                          stratify=y)
    rfc = RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0).fit(xtr, ytr)
    onx = tree_ensemble_v5(rfc.estimators_, 4, 3, 0, classes=list(rfc.classes_))
    write(out, "iris-te5-rf-classifier", onx, features, xte, yte, float(rfc.score(xte, yte)))


def fit_quietly(model, x, y):
    """Fits an MLP, reporting (not warning) when it stops at max_iter before converging."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    mlp = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print(f"  (stopped at max_iter={mlp.max_iter} before converging)")
    return model


def mlp_opts(pipe):
    last = pipe.steps[-1][1] if isinstance(pipe, Pipeline) else pipe
    return {id(last): {"zipmap": False}}


SKL_OPSET = {"": 17, "ai.onnx.ml": 3}


def export_networks(out):
    """Multi-layer perceptrons: scikit-learn (skl2onnx), PyTorch-style graphs, refused graphs."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    bc = fit_quietly(make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(32,), random_state=0, max_iter=2000)), xtr, ytr)
    onx = to_onnx(bc, xtr[:1], options=mlp_opts(bc), target_opset=SKL_OPSET)
    write(out, "bc-mlp-30-32-2", onx, features, xte, yte, float(bc.score(xte, yte)))
    raw = fit_quietly(MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=2000),
                      xtr, ytr)
    onx = to_onnx(raw, xtr[:1], options=mlp_opts(raw), target_opset=SKL_OPSET)
    write(out, "bc-mlp-noscaler", onx, features, xte, yte, float(raw.score(xte, yte)))
    export_torch_style(out, features, xtr, xte, ytr, yte, bc)
    export_torch_leaky(out)

    features, x, y = load("iris.csv")
    classes = sorted(set(y))
    yi = np.array([classes.index(v) for v in y])
    # Petal width from the other three measurements (the split of iris-rf-regressor).
    xr, yr = x[:, :3], x[:, 3]
    rtr, rte, rytr, ryte = train_test_split(xr, yr, test_size=0.3, random_state=42)
    reg = fit_quietly(make_pipeline(StandardScaler(), MLPRegressor(
        hidden_layer_sizes=(16,), activation="relu", random_state=0, max_iter=2000)), rtr, rytr)
    onx = to_onnx(reg, rtr[:1], target_opset=SKL_OPSET)
    r2 = float(reg.score(rte, ryte))
    write(out, "iris-mlp-regressor", onx, features[:3], rte, ryte, extra={"float_r2": r2})
    print(f"  R^2 {r2:.4f}")
    xtr, xte, ytr, yte = train_test_split(x, yi, test_size=0.3, random_state=42, stratify=yi)
    for name, activation in [("iris-mlp-tanh", "tanh"), ("iris-mlp-logistic", "logistic")]:
        m = fit_quietly(MLPClassifier(hidden_layer_sizes=(8,), activation=activation,
                                      random_state=0, max_iter=2000), xtr, ytr)
        onx = to_onnx(m, xtr[:1], options=mlp_opts(m), target_opset=SKL_OPSET)
        write(out, name, onx, features, xte, yte, float(m.score(xte, yte)))

    export_mnist(out)
    export_refused_networks(out, features, xtr, xte)


def export_mnist(out, stored_rows=200):
    """MNIST: train on the first 8,000 rows (pixels / 255), test on the last 2,000; the exported
    pipeline reads raw pixels (a MinMaxScaler that is exactly x / 255 in front)."""
    with gzip.open(ROOT / "data" / "mnist-10k.csv.gz", "rt") as f:
        header = f.readline().strip().split(",")
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    features = header[:-1]
    x, y = data[:, :-1], data[:, -1].astype(np.int64)
    xtr, xte, ytr, yte = x[:8000], x[8000:], y[:8000], y[8000:]
    pixels = MinMaxScaler().fit(np.array([[0.0] * x.shape[1], [255.0] * x.shape[1]], dtype=np.float32))
    for name, hidden in [("mnist-mlp-784-128-10", (128,)), ("mnist-mlp-784-128-64-10", (128, 64))]:
        mlp = fit_quietly(MLPClassifier(hidden_layer_sizes=hidden, random_state=0, max_iter=60),
                          xtr / 255.0, ytr)
        pipe = Pipeline([("pixels", pixels), ("mlp", mlp)])
        onx = to_onnx(pipe, xtr[:1], options=mlp_opts(pipe), target_opset=SKL_OPSET)
        accuracy = float(pipe.score(xte, yte))
        stored = float(pipe.score(xte[:stored_rows], yte[:stored_rows]))
        write(out, name, onx, features, xte[:stored_rows], yte[:stored_rows], accuracy,
              note=f"first {stored_rows} of the 2,000 test rows; float_accuracy on all 2,000",
              extra={"stored_rows_accuracy": stored})


class TorchStyle:
    """Builds an ONNX graph with the node and tensor names torch.onnx.export gives an
    nn.Sequential: initializers "0.weight", "0.bias", nodes "/0/Gemm", "/1/Relu", values
    "/0/Gemm_output_0", input "input", output "output", batch dimension "batch_size"."""

    def __init__(self, n_in):
        self.n_in, self.nodes, self.inits, self.cur = n_in, [], [], "input"
        self.counter = 0

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def node(self, op, scope, inputs, **attrs):
        out = f"{scope}/{op}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{scope}/{op}", **attrs))
        self.cur = out
        return out

    def standardize(self, mean, std, divide=True):
        """A forward starting with `(x - mean) / std` (or `* (1 / std)`)."""
        self.node("Sub", "", [self.cur, self.const("mean", mean)])
        if divide:
            self.node("Div", "", [self.cur, self.const("std", std)])
        else:
            self.node("Mul", "", [self.cur, self.const("inv_std", 1.0 / std)])

    def linear(self, i, weight_out_in, bias, matmul=False):
        if matmul:
            self.counter += 1
            w = self.const(f"onnx::MatMul_{100 + self.counter}", np.asarray(weight_out_in).T)
            self.node("MatMul", f"/{i}", [self.cur, w])
            self.node("Add", f"/{i}", [self.const(f"{i}.bias", bias), self.cur])
        else:
            self.node("Gemm", f"/{i}", [self.cur, self.const(f"{i}.weight", weight_out_in),
                                        self.const(f"{i}.bias", bias)],
                      alpha=1.0, beta=1.0, transB=1)

    def act(self, i, op):
        self.node(op, f"/{i}", [self.cur])

    def model(self, n_out):
        self.nodes[-1].output[0] = "output"
        graph = helper.make_graph(
            self.nodes, "main_graph",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", self.n_in])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", n_out])],
            self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="export_models.py (torch.onnx.export layout)",
                              ir_version=8)
        onnx.checker.check_model(m)
        return m


def two_logits(w_in_1, b_1):
    """scikit-learn's single logistic output unit z = x w + b as two logits [-z/2, z/2]:
    softmax gives [1 - sigmoid(z), sigmoid(z)], the argmax is the same label."""
    w = np.asarray(w_in_1, dtype=np.float64)[:, 0]
    b = float(np.asarray(b_1)[0])
    return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2])


def write_torch(out, name, onx, features, xte, yte):
    path = out / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    logits = np.array(run_onnx(path, xte)["output"])
    accuracy = float(np.mean(np.argmax(logits, axis=1) == yte))
    write(out, name, onx, features, xte, yte, accuracy)


def export_torch_style(out, features, xtr, xte, ytr, yte, bc_pipe):
    """PyTorch-style graphs with weights from scikit-learn MLPs (see the module docstring)."""
    scaler = StandardScaler().fit(xtr)
    mlp = fit_quietly(MLPClassifier(hidden_layer_sizes=(32, 16), random_state=0, max_iter=2000),
                      scaler.transform(xtr), ytr)
    print(f"  scikit-learn (32, 16) accuracy {mlp.score(scaler.transform(xte), yte):.4f}")
    mean, std = scaler.mean_, scaler.scale_
    for name, matmul in [("torch-mlp-bc-32-16-2", False), ("torch-mlp-matmul", True)]:
        t = TorchStyle(xtr.shape[1])
        t.standardize(mean, std, divide=not matmul)
        t.linear(0, mlp.coefs_[0].T, mlp.intercepts_[0], matmul)
        t.act(1, "Relu")
        t.linear(2, mlp.coefs_[1].T, mlp.intercepts_[1], matmul)
        t.act(3, "Relu")
        t.linear(4, *two_logits(mlp.coefs_[2], mlp.intercepts_[2]), matmul)
        write_torch(out, name, t.model(2), features, xte, yte)

    # Linear -> BatchNorm1d -> ReLU -> Linear computing bc-mlp-30-32-2's function on raw
    # features: the first Linear takes the standardization and a per-unit factor a and shift
    # c (u = a h + c for bc-mlp's pre-activation h); the batch norm's running statistics are
    # u's on the training rows and its affine parameters undo a and c.
    sc, net = bc_pipe.steps[0][1], bc_pipe.steps[-1][1]
    w0 = net.coefs_[0].astype(np.float64)  # [in, hidden]
    w_raw = w0 / sc.scale_[:, None]
    b_raw = net.intercepts_[0] - (sc.mean_ / sc.scale_) @ w0
    rng = np.random.default_rng(7)
    a = rng.uniform(0.5, 2.0, w0.shape[1])
    c = rng.normal(0.0, 1.0, w0.shape[1])
    u = (xtr.astype(np.float64) @ w_raw + b_raw) * a + c
    eps = 1e-5
    run_mean, run_var = u.mean(axis=0), u.var(axis=0)
    sd = np.sqrt(run_var + eps)
    gamma, beta = sd / a, (run_mean - c) / a
    t = TorchStyle(xtr.shape[1])
    t.linear(0, (w_raw * a).T, b_raw * a + c)
    t.node("BatchNormalization", "/1", [t.cur, t.const("1.weight", gamma), t.const("1.bias", beta),
                                        t.const("1.running_mean", run_mean),
                                        t.const("1.running_var", run_var)],
           epsilon=eps, momentum=0.9)
    t.act(2, "Relu")
    t.linear(3, *two_logits(net.coefs_[1], net.intercepts_[1]))
    write_torch(out, "torch-mlp-bn-folded", t.model(2), features, xte, yte)


def export_torch_leaky(out):
    """A PyTorch-style network with a LeakyReLU(0.1) hidden layer and a LogSoftmax ending (the
    classic PyTorch classifier), weights fitted by scikit-learn on breast cancer (16 hidden
    units, relu: the leaky slope then changes the function a little; ONNX Runtime's outputs are
    the reference). `--only leaky` writes just this one."""
    features, x, y = load("breast_cancer.csv")
    classes = sorted(set(y))
    yb = np.array([classes.index(v) for v in y])
    xtr, xte, ytr, yte = train_test_split(x, yb, test_size=0.2, random_state=42, stratify=yb)
    scaler = StandardScaler().fit(xtr)
    mlp = fit_quietly(MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=2000),
                      scaler.transform(xtr), ytr)
    t = TorchStyle(xtr.shape[1])
    t.standardize(scaler.mean_, scaler.scale_)
    t.linear(0, mlp.coefs_[0].T, mlp.intercepts_[0])
    t.node("LeakyRelu", "/1", [t.cur], alpha=0.1)
    t.linear(2, *two_logits(mlp.coefs_[1], mlp.intercepts_[1]))
    t.node("LogSoftmax", "/3", [t.cur], axis=1)
    write_torch(out, "torch-mlp-leaky-logsoftmax", t.model(2), features, xte, yte)


def export_refused_networks(out, iris_features, iris_train, iris_test):
    """Small graphs with an operator the importer refuses (random seeded weights)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (8, 1, 4, 4)).astype(np.float32)

    def image_model(layer_nodes, flat):
        t = TorchStyle(16)
        t.nodes = layer_nodes(t)
        t.cur = t.nodes[-1].output[0]
        t.node("Flatten", "/2", [t.cur], axis=1)
        t.linear(3, rng.normal(0, 0.5, (3, flat)), rng.normal(0, 0.1, 3))
        t.nodes[-1].output[0] = "output"
        graph = helper.make_graph(
            t.nodes, "main_graph",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 1, 4, 4])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 3])],
            t.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="export_models.py (torch.onnx.export layout)",
                              ir_version=8)
        onnx.checker.check_model(m)
        return m

    conv = image_model(lambda t: [helper.make_node(
        "Conv", ["input", t.const("0.weight", rng.normal(0, 0.5, (2, 1, 3, 3))),
                 t.const("0.bias", rng.normal(0, 0.1, 2))],
        ["/0/Conv_output_0"], name="/0/Conv", kernel_shape=[3, 3])], 8)
    write(out, "unsupported-conv", conv, ["image 1x4x4"], images, [], note="Conv")
    pool = image_model(lambda t: [helper.make_node(
        "MaxPool", ["input"], ["/0/MaxPool_output_0"], name="/0/MaxPool",
        kernel_shape=[2, 2], strides=[2, 2])], 4)
    write(out, "unsupported-maxpool", pool, ["image 1x4x4"], images, [], note="MaxPool")

    # BatchNorm1d on the input (not after a dense layer): nothing to fold it into.
    t = TorchStyle(iris_train.shape[1])
    t.node("BatchNormalization", "/0", [t.cur, t.const("0.weight", np.ones(4)),
                                        t.const("0.bias", np.zeros(4)),
                                        t.const("0.running_mean", iris_train.mean(axis=0)),
                                        t.const("0.running_var", iris_train.var(axis=0))],
           epsilon=1e-5, momentum=0.9)
    t.linear(1, rng.normal(0, 0.5, (8, 4)), rng.normal(0, 0.1, 8))
    t.act(2, "Relu")
    t.linear(3, rng.normal(0, 0.5, (3, 8)), rng.normal(0, 0.1, 3))
    write(out, "unsupported-batchnorm", t.model(3), iris_features, iris_test, [],
          note="BatchNormalization")


if __name__ == "__main__":
    main()
