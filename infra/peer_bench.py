"""Tree ensembles side by side: concrete-ml (one record at a time, its default quantization)
and fhe-batch (`fhe-batch bench --trees` on the fixture exported by infra/export_models.py with
the same data split and hyperparameters), model after model in one run. Prints one key=value
line per model and engine, then the ratio. Called by infra/peer-bench.sh."""
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
    }[name]()


def bench_concrete(name, xtr, ytr, xte, yte, records):
    m = concrete_model(name)
    m.fit(xtr, ytr)
    t = time.perf_counter()
    circuit = m.compile(xtr)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - t
    pbs = circuit.statistics.get("programmable_bootstrap_count")
    x = xte[:records]
    t = time.perf_counter()
    pred = m.predict(x, fhe="execute")
    s = (time.perf_counter() - t) / records
    clear = m.predict(xte, fhe="disable")
    return {
        "engine": "concrete-ml",
        "model": name,
        "records": records,
        "s_per_record": s,
        "pbs_per_record": pbs,
        "compile_s": compile_s,
        "keygen_s": keygen_s,
        "fhe_equals_clear": int((pred == clear[:records]).sum()),
        "quantized_accuracy": float((clear == yte).mean()),
        "n_bits": getattr(m, "n_bits", None),
    }


def bench_ours(binary, name, records):
    out = subprocess.run(
        [binary, "bench", "--json", "--trees", str(ROOT / "tests/fixtures/onnx" / f"{name}.onnx"),
         "--tree-records", str(records)],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
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


def line(d):
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fhe-batch", required=True)
    ap.add_argument("--records", type=int, default=5, help="records per concrete-ml model")
    ap.add_argument("--our-records", type=int, default=64, help="records per fhe-batch model")
    ap.add_argument("--models", default="bc-tree-d4,bc-rf-20x4,bc-xgb-20x4")
    a = ap.parse_args()
    xtr, xte, ytr, yte = load_bc()
    import concrete.ml
    print(f"machine={platform.processor() or platform.machine()} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.2f} concrete_ml={concrete.ml.__version__}")
    for name in a.models.split(","):
        c = bench_concrete(name, xtr, ytr, xte, yte, a.records)
        print(line(c), flush=True)
        o = bench_ours(a.fhe_batch, name, a.our_records)
        print(line(o), flush=True)
        print(f"model={name} ratio={c['s_per_record'] / o['s_per_record']:.2f} "
              f"pbs_ratio={(c['pbs_per_record'] or 0) / o['pbs_per_record']:.1f} "
              f"load={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
