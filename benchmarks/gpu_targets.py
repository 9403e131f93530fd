"""Issue 7's probe targets (3-6) from ``gpu_emergence.py`` runs with the pipeline's probes
(``--grid-epochs``, ``--grid-control``, ``--grid-semantics``, ``--grid-offsets``): one table per
run, read from its JSON lines. Run here, on the records the GPU machine sent back.

    python benchmarks/gpu_targets.py results/gpu/emergence_....jsonl [--tag TAG] [--content-kind mlp1]

Per probed checkpoint (offset 0, ``original``): each kind's test accuracy on the trained states,
on the random-init states over the same programs, on the control task, and the majority.
Semantic content as the pipeline defines it (``tasks.phases``: original minus alternative, mean
over the main features and the alternatives, one probe kind) and the same net of the random-init
states, with R^2 and slope against accuracy across the probed checkpoints (target 4). The last
probed checkpoint's drops per alternative (target 5) and its future offsets (target 6). With
several probe seeds (``gpu_emergence --grid-seeds``), the last checkpoint's margins paired by seed
with 95% t-intervals, as the pipeline reads "clearly above" (targets 3, 5, 6): over the majority,
the control task and the random-init states, and the drops under each alternative, raw and
beyond random-init.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_emergence import grid_key  # noqa: E402
from probes.labels import MAIN_FEATURES  # noqa: E402
from probes.stats import mean_ci  # noqa: E402
from tasks.report_data import line_fit  # noqa: E402

KINDS = ("linear", "mlp1", "mlp2")


def probed(path: str) -> dict[str, list[dict]]:
    """Each run's evaluation records that carry probes, by tag, in step order."""
    runs: dict[str, list[dict]] = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            # the first runs with probes (2026-12-04) have no grid_pairs
            if r.get("part") == "eval" and any(k.startswith("grid_") and k != "grid_pairs" for k in r):
                runs.setdefault(r["tag"], []).append(r)
    return {tag: sorted(rs, key=lambda r: r["step"]) for tag, rs in runs.items()}


def pairs(r: dict) -> str:
    return f"{r['grid_pairs']:,}" if "grid_pairs" in r else "-"


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def content(r: dict, kind: str, alts, name: str = "grid") -> float | None:
    """Mean over the main features and ``alts`` of original minus alternative (``name``'s states)."""
    diffs = [r[grid_key(name, kind, f)] - r[grid_key(name, kind, f, alt)] for f in MAIN_FEATURES for alt in alts
             if grid_key(name, kind, f) in r and grid_key(name, kind, f, alt) in r]
    return sum(diffs) / len(diffs) if diffs else None


def seed_diffs(r: dict, plus: list[str], minus: list[str]) -> list[float] | None:
    """Per probe seed: the sum of ``plus`` keys' accuracies minus the sum of ``minus`` keys'
    (``<key>#seeds`` lists, in seed order); None when a key has no per-seed values."""
    lists = [r.get(k + "#seeds") for k in plus + minus]
    if any(v is None for v in lists):
        return None
    return [sum(v[i] for v in lists[:len(plus)]) - sum(v[i] for v in lists[len(plus):])
            for i in range(len(lists[0]))]


def ci(diffs: list[float] | None) -> str:
    if diffs is None:
        return "-"
    m, lo, hi = (round(100 * v, 1) + 0.0 for v in mean_ci(diffs))  # + 0.0: no "-0.0"
    return f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def margins(last: dict, kinds, alts, offsets) -> list[str]:
    """The last checkpoint's margins paired by probe seed (pp, mean [95% CI])."""
    n = next((len(v) for k, v in last.items() if k.endswith("#seeds")), 0)
    out = ["", f"Margins at step {last['step']:,}, paired by probe seed ({n} seeds), pp, mean [95% CI]:", ""]
    for off in offsets:
        for f in MAIN_FEATURES:
            for k in kinds:
                probe = grid_key("grid", k, f, offset=off)
                out.append(f"- offset {off:+d}, {f}, {k}: over majority "
                           f"{ci(seed_diffs(last, [probe], [grid_key('grid', 'majority', f, offset=off)]))}; "
                           f"over control task {ci(seed_diffs(last, [probe], [grid_key('grid_control', k, f, offset=off)]))}; "
                           f"over random-init {ci(seed_diffs(last, [probe], [grid_key('grid_init', k, f, offset=off)]))}")
    for alt in alts:
        for f in MAIN_FEATURES:
            for k in kinds:
                o, a = grid_key("grid", k, f), grid_key("grid", k, f, alt)
                oi, ai = grid_key("grid_init", k, f), grid_key("grid_init", k, f, alt)
                out.append(f"- {alt}, {f}, {k}: drop {ci(seed_diffs(last, [o], [a]))}; "
                           f"beyond random-init {ci(seed_diffs(last, [o, ai], [a, oi]))}")
    return out


def report(tag: str, recs: list[dict], content_kind: str) -> list[str]:
    kinds = [k for k in KINDS if any(grid_key("grid", k, f) in recs[0] for f in MAIN_FEATURES)]
    alts = sorted({k.split("#")[0].split("@")[1].rstrip("+-0123456789") for k in recs[0]
                   if k.startswith("grid_") and "@" in k})
    out = [f"## {tag}", "", "Offset 0, original: trained / random-init / control task (majority), test accuracy %.", "",
           "| step | tokens | acc | acc 6..10 | pairs | " + " | ".join(f"{f} {k}" for f in MAIN_FEATURES for k in kinds)
           + " | " + " | ".join(f"{f} majority" for f in MAIN_FEATURES) + " |",
           "|" + "---:|" * (5 + len(MAIN_FEATURES) * (len(kinds) + 1))]
    for r in recs:
        cells = [" / ".join(pct(r.get(grid_key(n, k, f))) for n in ("grid", "grid_init", "grid_control"))
                 for f in MAIN_FEATURES for k in kinds]
        cells += [pct(r.get(grid_key("grid", "majority", f))) for f in MAIN_FEATURES]
        out.append(f"| {r['step']:,} | {r['tokens_seen'] / 1e6:.1f}M | {pct(r['acc_spec'])} | "
                   f"{pct(r['acc_spec_len6_10'])} | {pairs(r)} | " + " | ".join(cells) + " |")
    if alts:
        out += ["", f"Semantic content ({content_kind}, mean over {', '.join(MAIN_FEATURES)} and {', '.join(alts)}), pp:", ""]
        points = []
        for r in recs:
            c, c_init = content(r, content_kind, alts), content(r, content_kind, alts, "grid_init")
            net = None if c is None or c_init is None else c - c_init
            points.append((r["acc_spec"], c, net))
            out.append(f"- step {r['step']:,} (accuracy {pct(r['acc_spec'])}%): content {pct(c)}, "
                       f"random-init {pct(c_init)}, beyond random-init {pct(net)}")
        for label, i in (("content", 1), ("content beyond random-init", 2)):
            pts = [(p[0], p[i]) for p in points if p[i] is not None]
            fit = line_fit(*zip(*pts)) if len(pts) >= 3 else None
            out.append(f"- {label} vs accuracy: " + ("no fit" if fit is None else
                       f"R^2 = {fit[0]:.3f}, slope {fit[1]:+.3f} over {len(pts)} checkpoints"))
        last = recs[-1]
        out += ["", f"Drops at step {last['step']:,} (original minus alternative, trained / random-init states), pp:", ""]
        for alt in alts:
            for k in kinds:
                cells = []
                for f in MAIN_FEATURES:
                    d = [last.get(grid_key(n, k, f)) - last.get(grid_key(n, k, f, alt))
                         if grid_key(n, k, f, alt) in last else None for n in ("grid", "grid_init")]
                    cells.append(f"{f} {pct(d[0])} / {pct(d[1])}")
                out.append(f"- {alt}, {k}: " + "; ".join(cells))
    future = sorted({int(k[-2:]) for k in recs[-1] if k.startswith("grid_") and k[-2] == "+"})
    for off in future:
        last = recs[-1]
        out += ["", f"Offset {off:+d} at step {last['step']:,}: trained / random-init / control task (majority), %:", ""]
        for f in MAIN_FEATURES:
            cells = [f"{k} " + " / ".join(pct(last.get(grid_key(n, k, f, offset=off)))
                                          for n in ("grid", "grid_init", "grid_control")) for k in kinds]
            out.append(f"- {f}: " + "; ".join(cells) + f" (majority {pct(last.get(grid_key('grid', 'majority', f, offset=off)))})")
    if any(k.endswith("#seeds") for k in recs[-1]):
        out += margins(recs[-1], kinds, alts, [0, *future])
    return out + [""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--tag", help="one run (default: every run with probes)")
    ap.add_argument("--content-kind", default="mlp1", help="the probe kind semantic content reads (the pipeline's: mlp1)")
    args = ap.parse_args()
    runs = probed(args.jsonl)
    if args.tag:
        if args.tag not in runs:
            raise SystemExit(f"{args.jsonl}: no run {args.tag!r} with probes; runs with probes: {sorted(runs)}")
        runs = {args.tag: runs[args.tag]}
    if not runs:
        raise SystemExit(f"{args.jsonl}: no evaluation carries the pipeline's probes (gpu_emergence --grid-epochs)")
    for tag, recs in runs.items():
        print("\n".join(report(tag, recs, args.content_kind)))


if __name__ == "__main__":
    main()
