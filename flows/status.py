"""``semprobe status``: for a preset (and overrides), which stages are done, running (a process
holds the key's lock, e.g. a probe grid an hour into its epochs) and missing.

Keys are recomputed from the config and the current library code, so a code change shows up
as 'missing' for exactly the stages it invalidates.
"""

from __future__ import annotations

from datetime import datetime, timezone

from flows.presets import load_preset
from model.checkpoint import list_checkpoints
from model.config import checkpoint_steps
from model.progress import describe, read_progress
from probes.resume import saved_units
from tasks.activations import activations_key
from tasks.dataset import dataset_key
from tasks.evaluation import evaluate_key
from tasks.probing import probe_key
from tasks.probe_config import probe_config_at
from tasks.training import checkpoint_key, train_key
from tasks.workspace import Workspace


def stage_status(ws: Workspace, preset: str, overrides=()) -> list[dict]:
    cfg = load_preset(preset, overrides)
    store = ws.store

    def row(stage, key, detail=""):
        if store.is_complete(stage, key, verify="stat"):
            return {"stage": stage, "key": key, "state": "done", "detail": detail}
        since = store.computing_since(stage, key)
        if since is not None:
            when = datetime.fromtimestamp(since, timezone.utc).strftime("%H:%M UTC")
            return {"stage": stage, "key": key, "state": "running", "detail": f"{detail} (since {when})".strip()}
        return {"stage": stage, "key": key, "state": "corrupt" if store.exists(stage, key) else "missing",
                "detail": detail}

    ds = dataset_key(cfg.data)
    tk = train_key(cfg.model, cfg.train, ds)
    train_detail = f"{cfg.train.steps} steps"
    saved = list_checkpoints(ws.work_dir / "train" / tk)
    if saved and saved[-1][0] < cfg.train.steps:  # training unfinished: where it stands or resumes
        train_detail += f", checkpointed at step {saved[-1][0]}"
    train_row = row("train", tk, train_detail)
    live = read_progress(ws.work_dir / "train" / tk)
    if train_row["state"] == "running" and live is not None and saved and live["step"] > saved[-1][0]:
        when = datetime.fromtimestamp(live["updated"], timezone.utc).strftime("%H:%M:%S UTC")
        train_row["detail"] += f"; at step {live['step']} at {when}, {describe(live)}"
    rows = [row("dataset", ds), train_row]
    probed = cfg.probed_steps()
    for step in checkpoint_steps(cfg.train):
        ck = checkpoint_key(tk, step)
        rows.append(row("checkpoint", ck, f"step {step}"))
        rows.append(row("evaluate", evaluate_key(cfg.eval, ds, ck), f"step {step}"))
        if step not in probed:
            continue
        ak = activations_key(cfg.activations, ds, ck)
        rows.append(row("activations", ak, f"step {step}"))
        for sem in cfg.probe.semantics:
            pk = probe_key(probe_config_at(cfg.probe, step, probed), ak, sem)
            r = row("probes", pk, f"step {step} {sem}")
            units = saved_units(ws.work_dir / "probes" / pk)
            if units and r["state"] != "done":  # what a resumed grid will not train again
                r["detail"] += f", {units} (seed, kind) units saved"
            rows.append(r)
    return rows
