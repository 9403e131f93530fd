"""How the pipeline flow schedules its tasks: the costliest ready probe grid first, and polls
that wait on the tasks they poll, not on the poll interval."""

import concurrent.futures
import threading
import types

from flows import pipeline
from flows.pipeline import start_costliest


def test_start_costliest_starts_the_costliest_ready_grid_when_a_worker_is_free():
    started = []
    ready = [(2, "flip@0"), (3, "original@0"), (2, "adversarial@0"), (13, "original@2000")]
    out = start_costliest(ready, running=1, slots=3, start=lambda g: started.append(g) or len(started))
    assert started == ["original@2000", "original@0"]
    assert out == [("original@2000", 1), ("original@0", 2)]
    assert ready == [(2, "flip@0"), (2, "adversarial@0")]  # ties wait in the order they came
    assert start_costliest(ready, running=3, slots=3, start=started.append) == []  # no free worker
    assert len(ready) == 2


def test_a_poll_waits_for_a_task_to_end_not_for_the_poll_interval(monkeypatch):
    monkeypatch.setattr(pipeline, "POLL_S", 3600.0)  # were it slept through, the thread below would not end
    task = types.SimpleNamespace(wrapped_future=concurrent.futures.Future())
    waiter = threading.Thread(target=pipeline._pause, args=([task],), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # still waiting on the running task
    task.wrapped_future.set_result(None)
    waiter.join(30)
    assert not waiter.is_alive()
    pipeline._pause([])  # nothing running: no wait at all
