"""Stage 3b: decode specs with one checkpoint and keep the hidden state at every emitted action.

The artifact ``activations.npz`` holds, for P specs (train-split specs first, then test):
``programs`` (P, 14) generated action ids (-1 padded), ``lengths``, ``hidden`` (P, 14, d)
float16 layer mean, optionally ``hidden_layers`` (P, 14, n_layer+1, d), ``is_test`` (P,) and
the spec input worlds (``walls``, ``markers``, ``row``, ``col``, ``dir``; P*W of them,
program-major) that the probe labels are computed from. ``hidden[p, j]`` is the state at the
position that emitted action j (model.decode's alignment convention). With ``random_init``, a
checkpoint after step 0 also keeps ``hidden_init`` (P, 14, d): the random-init (step-0) model's
layer-mean states reading the *same* generated programs, the control the probes compare
against on the same labels (the step-0 model's own programs differ: e.g. one repeated action).
With ``programs="reference"`` the states read the specs' reference programs (teacher-forced)
instead of generated ones: the same programs and labels at every checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

import karel
from model.checkpoint import load_model
from model.decode import MAX_ACTIONS, forced_hidden, forced_states, generate
from model.machine import bf16_native
from tasks.dataset import data_dir
from tasks.stage import recomputed, run_stage, stage_key
from tasks.stage_configs import ActivationConfig, stage_device
from tasks.training import checkpoint_file, published_checkpoint

HELPERS = ("tasks.stage_configs",)  # task modules whose code counts in the key too (stage_key)

ACTIVATIONS_FILE = "activations.npz"


def concat_samples(a: karel.Samples, b: karel.Samples) -> karel.Samples:
    cat = lambda x, y: np.concatenate([x, y])
    worlds = lambda x, y: karel.WorldBatch(*(cat(getattr(x, f), getattr(y, f)) for f in ("walls", "markers", "row", "col", "dir")))
    return karel.Samples(cat(a.ids, b.ids), cat(a.programs, b.programs), worlds(a.inputs, b.inputs), worlds(a.outputs, b.outputs))


def activations_key(cfg: ActivationConfig, dataset_key: str, checkpoint_key: str) -> str:
    """The dump's key: which checkpoints are dumped (``cfg.checkpoints``, ``cfg.probe_step0``) is
    not part of what a dump holds, so probing more of them reuses the dumps already made."""
    return stage_key("activations", replace(cfg, checkpoints=0, probe_step0=True), [dataset_key, checkpoint_key],
                     ["karel", "model.checkpoint", "model.decode"], __name__, HELPERS)


@task(name="dump-activations", cache_policy=NONE)
def dump_activations(ws_root: str, cfg: ActivationConfig, dataset: dict, ckpt: dict) -> dict:
    key = activations_key(cfg, dataset["key"], ckpt["key"])

    def compute(tmp: Path) -> dict:
        model, saved = load_model(checkpoint_file(ckpt), device=stage_device())
        train = karel.load_split(data_dir(dataset), "train", limit=cfg.n_train_specs)
        test = karel.load_split(data_dir(dataset), "test", limit=cfg.n_test_specs)
        specs = concat_samples(train, test)
        autocast = True if cfg.bf16 and bf16_native(stage_device()) else None
        if cfg.programs == "reference":
            programs = reference_programs(specs)
            hidden, layers = forced_states(model, specs, programs, saved["vocab_obj"], cfg.batch_size, autocast,
                                           keep_layers=cfg.per_layer)
        else:
            gen = generate(model, specs, saved["vocab_obj"], "constrained", batch_size=cfg.batch_size,
                           keep_layers=cfg.per_layer, autocast=autocast)
            programs, hidden, layers = gen.programs, gen.hidden, gen.hidden_layers
        arrays = dict(
            programs=programs, lengths=(programs >= 0).sum(1), hidden=hidden,
            is_test=np.arange(len(specs)) >= len(train), spec_ids=specs.ids,
            walls=specs.inputs.walls, markers=specs.inputs.markers,
            row=specs.inputs.row, col=specs.inputs.col, dir=specs.inputs.dir,
        )
        if layers is not None:
            arrays["hidden_layers"] = layers
        if cfg.random_init and ckpt["step"] > 0:
            init_model, _ = load_model(checkpoint_file(initial_checkpoint(ws_root, ckpt)), device=stage_device())
            arrays["hidden_init"] = forced_hidden(init_model, specs, programs, saved["vocab_obj"], cfg.batch_size,
                                                autocast)
        np.savez(tmp / ACTIVATIONS_FILE, **arrays)
        return {"step": ckpt["step"], "checkpoint_key": ckpt["key"], "n_specs": len(specs),
                "n_actions": int(arrays["lengths"].sum()), "programs": cfg.programs}

    return run_stage(ws_root, "activations", key, compute, force=recomputed(dataset))


def reference_programs(specs: karel.Samples) -> np.ndarray:
    """(P, 14) the specs' reference action ids, -1 padded, in ``generate``'s layout."""
    out = np.full((len(specs), MAX_ACTIONS), -1, dtype=np.int64)
    width = min(specs.programs.shape[1], MAX_ACTIONS)
    out[:, :width] = specs.programs[:, :width]
    return out


def initial_checkpoint(ws_root: str, ckpt: dict) -> dict:
    """The step-0 checkpoint of ``ckpt``'s training run (published before any other)."""
    train_key = ckpt["key"].rsplit("-s", 1)[0]
    init = published_checkpoint(ws_root, train_key, 0)
    if init is None:
        raise FileNotFoundError(f"activations.random_init: the step-0 checkpoint of training run {train_key} "
                                f"is not in the store {ws_root}; rerun training, or set activations.random_init=false")
    return init


def load_activations(acts: dict) -> dict:
    """The arrays of an activations artifact, with the inputs as a ``karel.WorldBatch``."""
    with np.load(Path(acts["path"]) / ACTIVATIONS_FILE) as z:
        a = {k: z[k] for k in z.files}
    a["inputs"] = karel.WorldBatch(*(a.pop(f) for f in ("walls", "markers", "row", "col", "dir")))
    return a
