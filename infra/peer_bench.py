"""Side by side, model after model in one run: concrete-ml (one record at a time) and fhe-batch
on the same models. Tree ensembles: concrete-ml trains the same model on the same split with
the same hyperparameters (its default quantization) and `fhe-batch bench --trees` runs the
fixture infra/export_models.py exported. Networks (`--mlp`): concrete-ml compiles the very
weights of the fixture (its scaler folded into the first layer) with
`compile_torch_model` (post-training quantization to 6 bits, approximate rounding of the
accumulators to 6 bits, as DESIGN.md's figure) and `fhe-batch bench --mlp` runs the fixture.
Prints one key=value line per model and engine, then the ratio.

Accuracy over several networks (`--mlp-seeds N`): one network of one architecture sits within
a few test digits of both engines' quantization, so a single comparison is decided by chance.
This mode trains N networks per shape (scikit-learn `MLPClassifier`, the fixtures' recipe,
`random_state` 0..N-1), exports each with skl2onnx, and scores both engines on the very same
weights over all 2,000 test digits: concrete-ml's exact integer predictions (`fhe="disable"`)
and its FHE simulation (`fhe="simulate"`, averaged over 4 calls), our integer reference and
our simulated encrypted predictions (the compile's noise model, averaged over its draws). No
timing: it may run beside other work. Called by infra/peer-bench.sh."""
import argparse
import csv
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent


def load_bc():
    rows = list(csv.DictReader(open(ROOT / "data" / "breast_cancer.csv")))
    features = [k for k in rows[0] if k != "label"]
    x = np.array([[float(r[f]) for f in features] for r in rows], dtype=np.float32)
    classes = sorted({r["label"] for r in rows})
    y = np.array([classes.index(r["label"]) for r in rows])
    # export_models.py's split for the breast-cancer fixtures.
    return train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)


def concrete_model(name):
    from concrete.ml.sklearn import DecisionTreeClassifier, RandomForestClassifier, XGBClassifier
    return {
        "bc-tree-d4": lambda: DecisionTreeClassifier(max_depth=4, random_state=0),
        "bc-rf-20x4": lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0),
        "bc-xgb-20x4": lambda: XGBClassifier(n_estimators=20, max_depth=4, learning_rate=0.3,
                                             random_state=0, tree_method="exact"),
        "bc-rf-48x3": lambda: RandomForestClassifier(n_estimators=48, max_depth=3, random_state=0),
        "bc-xgb-50x1": lambda: XGBClassifier(n_estimators=50, max_depth=1, learning_rate=0.3,
                                             random_state=0, tree_method="exact"),
        "bc-rf-100x8": lambda: RandomForestClassifier(n_estimators=100, max_depth=8,
                                                      random_state=0),
        "bc-rf-200x8": lambda: RandomForestClassifier(n_estimators=200, max_depth=8,
                                                      random_state=0),
    }[name]()


def run_concrete(name, compile_fn, fhe_fn, clear_fn, yte, records, **extra):
    """Times concrete-ml's compile (`compile_fn` returns the circuit), key generation and
    `records` predictions with `fhe="execute"` (`fhe_fn(n)`), and scores its clear quantized
    predictions (`clear_fn()`) on all test rows."""
    t = time.perf_counter()
    circuit = compile_fn()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - t
    t = time.perf_counter()
    pred = np.asarray(fhe_fn(records))
    s = (time.perf_counter() - t) / records
    clear = clear_fn()
    return {
        "engine": "concrete-ml",
        "model": name,
        "records": records,
        "s_per_record": s,
        "pbs_per_record": circuit.statistics.get("programmable_bootstrap_count"),
        "compile_s": compile_s,
        "keygen_s": keygen_s,
        "fhe_equals_clear": int((pred == clear[:records]).sum()),
        "quantized_accuracy": float((clear == yte).mean()),
        **extra,
    }


def bench_concrete(name, xtr, ytr, xte, yte, records):
    m = concrete_model(name)
    m.fit(xtr, ytr)
    return run_concrete(name, lambda: m.compile(xtr),
                        lambda n: m.predict(xte[:n], fhe="execute"),
                        lambda: m.predict(xte, fhe="disable"), yte, records,
                        n_bits=getattr(m, "n_bits", None))


def our_bench(binary, *args):
    """`fhe-batch bench --json ARGS`, parsed."""
    out = subprocess.run([binary, "bench", "--json", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def bench_ours(binary, name, records):
    doc = our_bench(binary, "--trees", str(ROOT / "tests/fixtures/onnx" / f"{name}.onnx"),
                    "--tree-records", str(records))
    f = (doc["trees"] if isinstance(doc, dict) and "trees" in doc else doc)[0]
    return {
        "engine": "fhe-batch",
        "model": name,
        "records": f["records"],
        "s_per_record": f["eval_s_per_record"],
        "pbs_per_record": f["pbs_per_record"],
        "exact": f["exact"],
        "accuracy": f["accuracy"],
    }


def load_mnist():
    """MNIST-10k as bench --mlp splits it: the first 8,000 rows calibrate, the rest test."""
    import gzip
    rows = list(csv.reader(gzip.open(ROOT / "data" / "mnist-10k.csv.gz", "rt")))
    header, rows = rows[0], rows[1:]
    lc = header.index("label")
    x = np.array([[float(v) for i, v in enumerate(r) if i != lc] for r in rows], dtype=np.float32)
    y = np.array([int(r[lc]) for r in rows])
    return x[:8000], y[:8000], x[8000:], y[8000:]


def torch_of(path):
    """The fixture's network as a torch nn.Sequential with the same weights: skl2onnx's
    per-feature Mul/Add in front (a MinMaxScaler) folded into the first Linear, ReLU between
    layers, the final Softmax dropped (argmax-invariant; concrete-ml returns the logits)."""
    import onnx
    import torch
    from onnx import numpy_helper
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    scale, shift, mods, pending = 1.0, 0.0, [], None
    for n in m.graph.node:
        const = next((init[i] for i in n.input if i in init), None)
        if n.op_type == "MatMul":
            pending = const.T  # (out, in)
        elif n.op_type == "Add" and pending is not None:
            w, b = pending, const.reshape(-1)
            if not mods:
                b = b + w @ (shift * np.ones(w.shape[1]))
                w = w * scale
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.tensor(w, dtype=torch.float32)
            lin.bias.data = torch.tensor(b, dtype=torch.float32)
            mods.append(lin)
            pending = None
        elif n.op_type == "Mul" and not mods:
            scale, shift = scale * const, shift * const
        elif n.op_type == "Add" and not mods:
            shift = shift + const
        elif n.op_type == "Relu":
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def concrete_compile_mlp(model, calibration_x):
    """concrete-ml's compile of a torch network: post-training quantization to 6 bits,
    accumulators rounded (approximately) to 6 bits, as DESIGN.md's figure."""
    from concrete.ml.torch.compile import compile_torch_model
    return compile_torch_model(model, calibration_x, n_bits=6,
                               rounding_threshold_bits={"n_bits": 6, "method": "approximate"})


def bench_concrete_mlp(name, records, calibration):
    xtr, _, xte, yte = load_mnist()
    model = torch_of(ROOT / "tests/fixtures/onnx" / f"{name}.onnx")
    qm = None

    def compile_fn():
        nonlocal qm
        qm = concrete_compile_mlp(model, xtr[:calibration])
        return qm.fhe_circuit

    return run_concrete(
        name, compile_fn,
        lambda n: [int(qm.forward(xte[i:i + 1], fhe="execute").argmax()) for i in range(n)],
        lambda: qm.forward(xte, fhe="disable").argmax(1), yte, records)


def bench_ours_mlp(binary, name, records):
    f = our_bench(binary, "--mlp", str(ROOT / "tests/fixtures/onnx" / f"{name}.onnx"),
                  "--mlp-records", str(records))
    return {
        "engine": "fhe-batch",
        "model": name,
        "records": f["records"],
        "s_per_record": f["s_per_record"],
        "pbs_per_record": f["pbs_per_record"],
        "agreement": f["agreement"],
        "quantized_accuracy": f["test_quantized_accuracy"],
        "encrypted_accuracy_simulated": f["test_simulated_encrypted_accuracy"],
        "float_accuracy": f["test_float_accuracy"],
    }


def train_mnist_mlp(xtr, ytr, hidden, seed, out_dir):
    """A scikit-learn MLP trained on MNIST rows `xtr` as infra/export_models.py trains the
    fixtures (pixels / 255 by a MinMaxScaler in front, 60 epochs), exported to ONNX; returns
    its path. (export_models.py's own code needs the ML venv, not concrete-ml's.)"""
    import warnings
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler
    pixels = MinMaxScaler().fit(np.array([[0.0] * 784, [255.0] * 784], dtype=np.float32))
    mlp = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed, max_iter=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit(xtr / 255.0, ytr)
    pipe = Pipeline([("pixels", pixels), ("mlp", mlp)])
    onx = to_onnx(pipe, xtr[:1], options={id(mlp): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    shape = "-".join(str(v) for v in (784, *hidden, 10))
    path = Path(out_dir) / f"mnist-mlp-{shape}-seed{seed}.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


# Simulation draws per test digit, as the compile's report averages ours (SIM_DRAWS in
# shared/train/src/mlp.rs): concrete-ml's simulation draws its bootstrap errors afresh per call.
SIM_DRAWS = 4


def accuracy_study(binary, shapes, seeds, calibration):
    """Both engines' accuracy on `seeds` networks per shape (see the module docs)."""
    import tempfile
    xtr, ytr, xte, yte = load_mnist()
    keys = ["float", "concrete_integer", "concrete_simulated", "ours_integer", "ours_simulated"]
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in shapes:
            rows = []
            for seed in range(seeds):
                path = train_mnist_mlp(xtr, ytr, hidden, seed, tmp)
                qm = concrete_compile_mlp(torch_of(path), xtr[:calibration])
                ours = our_bench(binary, "--mlp", str(path), "--mlp-records", "1")
                row = {
                    "network": path.stem,
                    "float": ours["test_float_accuracy"],
                    "concrete_integer": float((qm.forward(xte, fhe="disable").argmax(1)
                                               == yte).mean()),
                    "concrete_simulated": float(np.mean([
                        (qm.forward(xte, fhe="simulate").argmax(1) == yte).mean()
                        for _ in range(SIM_DRAWS)])),
                    "ours_integer": ours["test_quantized_accuracy"],
                    "ours_simulated": ours["test_simulated_encrypted_accuracy"],
                }
                rows.append(row)
                print(line(row), flush=True)
            means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
            wins = sum(r["ours_simulated"] > r["concrete_simulated"] for r in rows)
            ties = sum(r["ours_simulated"] == r["concrete_simulated"] for r in rows)
            print(line({"shape": path.stem.rsplit("-seed", 1)[0], "networks": len(rows),
                        **{f"mean_{k}": v for k, v in means.items()},
                        "ours_better": wins, "ties": ties}), flush=True)


def line(d):
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fhe-batch", required=True)
    ap.add_argument("--records", type=int, default=5, help="records per concrete-ml model")
    ap.add_argument("--our-records", type=int, default=64, help="records per fhe-batch model")
    ap.add_argument("--models", default="bc-tree-d4,bc-rf-20x4,bc-xgb-20x4")
    ap.add_argument("--mlp", action="store_true",
                    help="networks instead: --models mnist-mlp-784-128-10,...")
    ap.add_argument("--calibration", type=int, default=1000,
                    help="--mlp: MNIST rows concrete-ml calibrates on")
    ap.add_argument("--mlp-seeds", type=int, default=0,
                    help="accuracy over N networks per shape instead (see the module docs)")
    ap.add_argument("--shapes", default="128,128-64",
                    help="--mlp-seeds: hidden layers per shape, comma-separated")
    a = ap.parse_args()
    xtr, xte, ytr, yte = load_bc()
    import concrete.ml
    print(f"machine={platform.processor() or platform.machine()} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.2f} concrete_ml={concrete.ml.__version__}")
    if a.mlp_seeds:
        shapes = [tuple(int(v) for v in s.split("-")) for s in a.shapes.split(",")]
        accuracy_study(a.fhe_batch, shapes, a.mlp_seeds, a.calibration)
        return
    for name in a.models.split(","):
        if a.mlp:
            c = bench_concrete_mlp(name, a.records, a.calibration)
        else:
            c = bench_concrete(name, xtr, ytr, xte, yte, a.records)
        print(line(c), flush=True)
        if a.mlp:
            o = bench_ours_mlp(a.fhe_batch, name, a.our_records)
        else:
            o = bench_ours(a.fhe_batch, name, a.our_records)
        print(line(o), flush=True)
        print(f"model={name} ratio={c['s_per_record'] / o['s_per_record']:.2f} "
              f"pbs_ratio={(c['pbs_per_record'] or 0) / o['pbs_per_record']:.1f} "
              f"load={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
