"""Writing what finished: DuckDB rows (the record) and MLflow runs (the view for people).

Only the flow process uses this module: it is the single DuckDB writer. Every row comes from a
stage artifact, so a cached rerun writes identical rows again (upserts are idempotent).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks import tracking
from tasks.results import ResultsDB

MEAN_LAYER = -1  # the layer column's value for the layer-mean representation


class Recorder:
    def __init__(self, db: ResultsDB, run_id: str, mlflow_parent: str):
        self.db, self.run_id, self.parent = db, run_id, mlflow_parent
        self._metrics: dict[int, dict] = {}

    def stage(self, out: dict) -> None:
        self.db.upsert("stage_runs", [{
            "run_id": self.run_id, "stage": out["stage"], "key": out["key"], "status": out["status"],
            "seconds": out["seconds"], "finished_at": datetime.now(timezone.utc),
        }])

    def run(self, preset, cfg, data_key, train_key, started, status) -> None:
        row = {"run_id": self.run_id, "preset": preset, "config": cfg.as_dict(), "data_key": data_key,
               "train_key": train_key, "started_at": started, "status": status}
        if status != "running":
            row["finished_at"] = datetime.now(timezone.utc)
        self.db.upsert("runs", [row])

    def dataset(self, ds: dict, cfg) -> None:
        self.stage(ds)
        self.db.upsert("datasets", [{"key": ds["key"], "config": asdict(cfg), "stats": ds["meta"]["stats"]}])
        stats = {f"data.{s}.{k}": v for s, st in ds["meta"]["stats"].items() for k, v in st.items()
                 if isinstance(v, (int, float))}
        tracking.log_metrics_by_step(self.parent, stats, 0)

    def checkpoint(self, ckpt: dict, ev: dict) -> None:
        self.stage(ev)
        step = int(ckpt["step"])
        self.db.upsert("checkpoints", [{"key": ckpt["key"], "train_key": ckpt["train_key"], "step": step,
                                        "tokens_seen": ckpt["tokens_seen"], "path": ckpt["path"]}])
        metrics = ev["metrics"]
        self.db.upsert("checkpoint_metrics", [
            {"checkpoint_key": ckpt["key"], "train_key": ckpt["train_key"], "step": step, "metric": k, "value": v}
            for k, v in metrics.items()])
        self._metrics[step] = {"step": step, "checkpoint_key": ckpt["key"], "eval_key": ev["key"], "tokens_seen": ckpt["tokens_seen"], **metrics}
        tracking.log_metrics_by_step(self.parent, metrics, step)
        child = tracking.nested_run(self.parent, f"checkpoint-{step}", {"step": step, "key": ckpt["key"]})
        tracking.log_metrics_by_step(child, metrics, step)
        tracking.finish_run(child)

    def checkpoint_rows(self) -> list[dict]:
        return [self._metrics[s] for s in sorted(self._metrics)]

    def probes(self, out: dict) -> None:
        """Rows of one probe grid (checkpoint x semantics) from its artifact files."""
        self.stage(out)
        folder = Path(out["path"])
        for table in ("probe_results", "probe_summary", "controls"):
            path = folder / f"{table}.parquet"
            if path.exists():
                self.db.upsert(table, pd.read_parquet(path))
        meta = out["meta"]
        summary = pd.read_parquet(folder / "probe_summary.parquet")
        test = summary[(summary["split"] == "test") & (summary["layer"] == MEAN_LAYER)]
        metrics = {f"probe.{meta['semantics']}.{r.feature}.o{r.offset}.{r.probe}": r.mean for r in test.itertuples()}
        child = tracking.nested_run(self.parent, f"probes-{meta['step']}-{meta['semantics']}",
                                    {"step": meta["step"], "semantics": meta["semantics"], "key": out["key"]})
        tracking.log_metrics_by_step(child, metrics, int(meta["step"]))
        tracking.finish_run(child)
        tracking.log_metrics_by_step(self.parent, metrics, int(meta["step"]))

    def phases(self, out: dict, train_key: str) -> None:
        from tasks.phases import content_rows

        self.stage(out)
        folder = Path(out["path"])
        for table in ("interventions", "phases"):
            path = folder / f"{table}.parquet"
            if path.exists():
                self.db.upsert(table, pd.read_parquet(path))
        rows = content_rows(out, train_key)
        self.db.upsert("checkpoint_metrics", rows)
        for r in rows:
            tracking.log_metrics_by_step(self.parent, {"semantic_content": r["value"]}, r["step"])
        tracking.log_metrics_by_step(self.parent, {k: v for k, v in out["meta"].items()
                                                    if isinstance(v, (int, float)) and v is not None}, 0)

    def report(self, out: dict) -> None:
        tracking.log_artifact(self.parent, out["folder"], "report")
        try:
            from prefect.artifacts import create_link_artifact, create_table_artifact

            create_table_artifact(key="semprobe-summary", table=out["table"],
                                  description="This run's numbers next to the paper's")
            create_link_artifact(key="semprobe-report", link=Path(out["html"]).as_uri(),
                                 description="Figures and the full report (self-contained HTML)")
        except Exception as e:  # the Prefect artifacts are a convenience: never lose the run for them
            print(f"warning: could not create Prefect artifacts: {e}")
