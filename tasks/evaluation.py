"""Stage 3a: generation metrics of one checkpoint (accuracy, perplexity, diversity, lengths)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

import karel
from model.checkpoint import load_model
from model.metrics import evaluate_checkpoint
from tasks.dataset import data_dir
from tasks.stage import recomputed, run_stage, stage_key
from tasks.stage_configs import EvalConfig, stage_device
from tasks.training import checkpoint_file

HELPERS = ("tasks.stage_configs",)  # task modules whose code counts in the key too (stage_key)


def evaluate_key(cfg: EvalConfig, dataset_key: str, checkpoint_key: str) -> str:
    return stage_key("evaluate", cfg, [dataset_key, checkpoint_key],
                     ["karel", "model.checkpoint", "model.metrics"], __name__, HELPERS)


@task(name="evaluate-checkpoint", cache_policy=NONE)
def evaluate(ws_root: str, cfg: EvalConfig, dataset: dict, ckpt: dict) -> dict:
    """Metrics of one checkpoint, written as ``metrics.json`` (a flat {name: value} dict)."""
    key = evaluate_key(cfg, dataset["key"], ckpt["key"])

    def compute(tmp: Path) -> dict:
        model, saved = load_model(checkpoint_file(ckpt), device=stage_device())
        vocab = saved["vocab_obj"]
        test = karel.load_split(data_dir(dataset), "test", limit=cfg.n_test_specs)
        val = karel.load_split(data_dir(dataset), "val", limit=cfg.n_val_samples)
        metrics = evaluate_checkpoint(model, vocab, test, val, batch_size=cfg.batch_size)
        metrics = {k: float(v) for k, v in metrics.items()}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        return {"step": ckpt["step"], "checkpoint_key": ckpt["key"]}

    out = run_stage(ws_root, "evaluate", key, compute, force=recomputed(dataset))
    out["metrics"] = json.loads((Path(out["path"]) / "metrics.json").read_text())
    return out
