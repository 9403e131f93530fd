"""Real processes on 127.0.0.1 for the distributed tests: a Prefect server, an MLflow server,
``deployments/setup.sh`` and ``deployments/worker.sh`` workers, each started in its own session
and stopped by its PID with its descendants (found through /proc), never by name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOMBIE_WITHIN_S = 60  # heartbeat every 30 s: one missed heartbeat and a half before "crashed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(proc: subprocess.Popen, sig=signal.SIGINT, grace: float = 15) -> None:
    """Stop ``proc`` and every descendant, by PID: ``sig``, then SIGKILL after ``grace`` s."""
    pids = descendants(proc.pid) + [proc.pid]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids):
        proc.poll()
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def wait_for(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Cluster:
    """Processes of the test, and the environment they share."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = root / "repo"
        self.ws = root / "ws"
        self.logs = root / "logs"
        self.logs.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "MLFLOW_", "SEMPROBE_", "CUDA_VISIBLE"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            PYTHONPATH=str(self.repo), PYTHON=sys.executable, SEMPROBE_REPO=str(self.repo),
            PREFECT_HOME=str(root / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_API_URL=f"http://127.0.0.1:{self.prefect_port}/api",
            PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_LOGGING_LEVEL="INFO", DO_NOT_TRACK="1",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{self.mlflow_port}", MLFLOW_DISABLE_TELEMETRY="true",
            ZOMBIE_WITHIN=str(ZOMBIE_WITHIN_S),
        )
        self.env = env

    def snapshot_code(self) -> None:
        self.repo.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for d in ("karel", "model", "probes", "tasks", "flows", "deployments"):
            shutil.copytree(REPO / d, self.repo / d, ignore=ignore)

    def start(self, name: str, cmd: list[str], **env) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, cwd=self.repo, env={**self.env, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, name: str, cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout)
        (self.logs / f"{name}.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise AssertionError(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
        return out

    def sweep_cmd(self, spec: Path) -> list[str]:
        return self.cli(self.ws, "sweep", str(spec))

    @staticmethod
    def cli(ws: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "flows.cli", "--workspace", str(ws), *args]

    def start_servers(self) -> None:
        """The Prefect and MLflow servers, then ``deployments/setup.sh`` (pool, queue,
        automation, deployments)."""
        self.start("prefect-server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)])
        self.start("mlflow-server", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                                     "--port", str(self.mlflow_port), "--workers", "1",
                                     "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                                     "--artifacts-destination", str(self.root / "mlartifacts")])
        wait_for("the Prefect server", lambda: http_ok(f"http://127.0.0.1:{self.prefect_port}/api/health"), 120)
        wait_for("the MLflow server", lambda: http_ok(f"http://127.0.0.1:{self.mlflow_port}/health"), 120)
        self.run("setup", ["bash", "deployments/setup.sh"], timeout=300)

    def start_workers(self, *names: str) -> dict[str, subprocess.Popen]:
        """``deployments/worker.sh`` workers named ``w-<name>``, once they are polling."""
        procs = {n: self.start(f"worker-{n}", ["bash", "deployments/worker.sh"], WORKER_NAME=f"w-{n}") for n in names}
        wait_for(f"workers {names} online", lambda: all("started" in self.log(f"worker-{n}") for n in names), 120)
        self.workers.update(procs)
        return procs

    def live_workers(self) -> list[str]:
        return [f"w-{n}" for n, p in self.workers.items() if alive(p.pid)]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            stop(self.procs[name])


    def api(self, path: str, body: dict | None = None):
        """The Prefect REST API (this process's own Prefect settings may point elsewhere)."""
        req = urllib.request.Request(self.env["PREFECT_API_URL"] + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def point_runs(self, deployment_id: str) -> list[dict]:
        """Every flow run of a deployment (by id)."""
        return self.api("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200})

    def deployment(self, name: str) -> dict:
        return self.api(f"/deployments/name/{name}")


def summary_of(log: str) -> dict:
    """The JSON summary ``semprobe run``/``sweep`` prints last (log lines may surround it)."""
    return json.JSONDecoder().raw_decode(log[log.rindex("\n{\n") + 1:])[0]
