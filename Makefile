# Two commands for a newcomer: `make run` (install + the default cpu preset end to end)
# and `make test` (install + the test suite). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow test-distributed bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/semprobe run --preset cpu

# Two pytest-xdist workers, one test file each at a time (a file's tests share its module fixtures,
# test_pipeline's one workspace): one worker waits on subprocess starts and Prefect round trips for
# much of its time, leaving a core idle (18:14 -> 13:39 on the 2-core Zen 1, BENCHMARKS.md).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The speed goals' scripts (issues 2, 3, 4), each a ratio against a baseline in the same run;
# ~10 minutes on 2 cores with bf16 in hardware; ~35 on the AVX2-only Zen 1 (float32, the probe grid
# on one thread ~30 of them, from its 1,755 cpu-seconds on two). The others in
# benchmarks/ need a run's workspace (BENCHMARKS.md).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/bench_karel.py
	$(BIN)/python benchmarks/bench_train.py --threads 1 --steps 3
	$(BIN)/python benchmarks/bench_probes.py --epochs 4 --sample 2

clean:
	rm -rf $(VENV) .semprobe

# A 4-point sweep over a real Prefect server, two process workers and an MLflow server on
# 127.0.0.1 (one worker is killed mid-point), then a smoke study fanned out to the train and
# checkpoint units (compared with the same config in process); about 6 minutes on 2 cores.
test-distributed: $(STAMP)
	SEMPROBE_TEST_DISTRIBUTED=1 $(BIN)/python -m pytest -q -s tests/test_distributed.py
