#!/usr/bin/env python3
"""Train sample scikit-learn and XGBoost models and export them to ONNX, the way users bring
their own models to fhe-batch (`fhe-batch import`).

    python3 -m venv ~/.cache/fhe-batch/ml-venv
    ~/.cache/fhe-batch/ml-venv/bin/pip install -r infra/requirements-ml.txt
    ~/.cache/fhe-batch/ml-venv/bin/python infra/export_models.py [OUT_DIR]

Writes OUT_DIR (default tests/fixtures/onnx) with, for each model, NAME.onnx and
NAME.expected.json: the held-out rows (features as float32, as ONNX runtimes see them), the
labels, and onnxruntime's outputs on them (labels and probabilities or predictions), which the
Rust importer's float evaluation must reproduce. Also writes models the importer must refuse
(operators it does not support), with the operator named in NAME.expected.json.

Classifiers are exported with `zipmap: False` (plain probability tensors). Every split is
seeded: the files are reproducible for the pinned package versions.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType as XgbFloat
from skl2onnx import to_onnx
from sklearn.ensemble import (GradientBoostingClassifier, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
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
    return {o.name: v.tolist() for o, v in zip(sess.get_outputs(), outs)}


def write(out, name, onx, features, x_test, y_test, float_accuracy=None, note=""):
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
    (out / f"{name}.expected.json").write_text(json.dumps(expected) + "\n")
    print(f"{name}: {path.stat().st_size} bytes" + (f", accuracy {float_accuracy:.4f}" if float_accuracy is not None else ""))


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/onnx"
    out.mkdir(parents=True, exist_ok=True)
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
    onx = convert_xgboost(xgb, initial_types=[("input", XgbFloat([None, x.shape[1]]))],
                          target_opset=15)
    write(out, "bc-xgb-20x4", onx, features, xte, yte, float(xgb.score(xte, yte)))

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
    write(out, "unsupported-scaler-pipeline", onx, features, xte, yte, note="Scaler")


if __name__ == "__main__":
    main()
