"""Stage 1: generate the Karel dataset (Parquet shards + manifest with statistics)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

import karel
from tasks.stage import run_stage, stage_key


def dataset_key(cfg: karel.DataConfig) -> str:
    return stage_key("dataset", cfg, [], ["karel"], __name__)


@task(name="generate-dataset", cache_policy=NONE)
def generate_dataset(ws_root: str, cfg: karel.DataConfig) -> dict:
    """Generate (or find) the dataset for ``cfg``; returns its manifest summary."""

    def compute(tmp: Path) -> dict:
        m = karel.generate_dataset(cfg, tmp / "data", workers=min(2, os.cpu_count() or 1))
        return {"stats": {s: v["stats"] for s, v in m["splits"].items()}}

    return run_stage(ws_root, "dataset", dataset_key(cfg), compute)


def data_dir(dataset: dict) -> Path:
    return Path(dataset["path"]) / "data"
