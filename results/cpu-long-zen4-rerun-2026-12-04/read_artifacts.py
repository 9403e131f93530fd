"""Print each finished probe grid of this folder: test accuracy (layer mean, mean over seeds) beside its baselines."""
import json, glob, os, sys
import pandas as pd
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "probes")
for d in sorted(glob.glob(f"{root}/*/")):
    m = json.load(open(os.path.join(d, "manifest.json")))
    meta = m.get("meta", {})
    print("==", os.path.basename(d.rstrip('/')), "step", meta.get("step"), meta.get("semantics"), "pairs", meta.get("n_pairs"))
    res = os.path.join(d, "probe_results.parquet")
    if not os.path.exists(res):
        continue
    r = pd.read_parquet(res)
    r = r[(r["split"] == "test") & (r["layer"] == -1)]
    acc = r.groupby(["feature", "offset", "probe"])["accuracy"].mean().unstack("probe")
    controls = os.path.join(d, "controls.parquet")
    c = pd.read_parquet(controls) if os.path.exists(controls) else pd.DataFrame(columns=["kind"])
    for kind in ("random_init", "control_task", "majority", "random_init_margin_low", "control_task_margin_low", "majority_margin_low"):
        k = c[c["kind"] == kind]
        if len(k) == 0:
            continue
        if kind == "majority":
            maj = k.set_index(["feature", "offset"])["value"]
            acc["majority"] = [maj.get((f, o)) for f, o in acc.index]
        else:
            t = k.pivot_table(index=["feature", "offset"], columns="probe", values="value")
            t.columns = [f"{kind}:{p}" for p in t.columns]
            acc = acc.join(t)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 3):
        print(acc)
