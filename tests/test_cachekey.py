import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.cachekey import cache_key, canonical_json, code_hash, module_closure, own_code_hash, package_files

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    dims: tuple = (64, 128)


@dataclasses.dataclass(frozen=True)
class Cfg:
    n: int = 10
    name: str = "x"
    inner: Inner = Inner()


@pytest.fixture
def fake_pkg(tmp_path, monkeypatch):
    root = tmp_path / "src"
    pkg = root / "fakelib_ck"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub.helper import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "helper.py").write_text("def f():\n    return 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.py").write_text("ignored")
    (pkg / "data.txt").write_text("not python")
    monkeypatch.syspath_prepend(str(root))
    return pkg


def test_package_files_sorted_and_filtered(fake_pkg):
    rels = [r for r, _ in package_files("fakelib_ck")]
    assert rels == ["__init__.py", "sub/__init__.py", "sub/helper.py"]


def test_code_hash_changes_with_any_helper(fake_pkg):
    h1 = code_hash("fakelib_ck")
    assert h1 == code_hash("fakelib_ck")
    (fake_pkg / "data.txt").write_text("changed, but not .py")
    (fake_pkg / "__pycache__" / "junk.py").write_text("changed too")
    assert code_hash("fakelib_ck") == h1
    (fake_pkg / "sub" / "helper.py").write_text("def f():\n    return 2\n")
    h2 = code_hash("fakelib_ck")
    assert h2 != h1
    (fake_pkg / "sub" / "new.py").write_text("")
    assert code_hash("fakelib_ck") != h2
    # moving a file (same bytes, different path) changes the hash
    h3 = code_hash("fakelib_ck")
    (fake_pkg / "sub" / "new.py").rename(fake_pkg / "new.py")
    assert code_hash("fakelib_ck") != h3


def test_code_hash_ignores_comments_and_docstrings_not_code(fake_pkg):
    """A comment or docstring edit must not re-train a model; any code edit must re-key."""
    helper = fake_pkg / "sub" / "helper.py"
    helper.write_text('"""Module doc."""\n\ndef f():\n    """Doc."""\n    return 1  # one\n')
    h = code_hash("fakelib_ck")
    helper.write_text('"""Module doc, reworded."""\n# a new comment\n\ndef f():\n'
                      '    """Another doc."""\n\n    return 1  # still one\n')
    assert code_hash("fakelib_ck") == h
    helper.write_text("def f():\n    return 1\n")  # docstrings gone altogether
    assert code_hash("fakelib_ck") == h
    for code in ("def f():\n    return 2\n", "def f():\n    return '1'\n",
                 "def f():\n    'not a docstring' if 0 else None\n    return 1\n",
                 "def g():\n    return 1\n", "def f(x=1):\n    return 1\n"):
        helper.write_text(code)
        assert code_hash("fakelib_ck") != h, code
    helper.write_text("def f(:\n")  # does not parse: hashed as bytes, still keyed
    broken = code_hash("fakelib_ck")
    helper.write_text("def f(: \n")
    assert code_hash("fakelib_ck") != broken


def test_an_imported_package_keeps_the_hash_of_the_code_it_loaded(tmp_path, monkeypatch):
    """Editing a library while a run goes must not re-key that run's later stages."""
    from tasks import cachekey

    pkg = tmp_path / "src" / "fakelib_pin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(cachekey, "_PINNED", {})
    before = code_hash("fakelib_pin")  # not imported yet: read fresh each time
    (pkg / "__init__.py").write_text("X = 2\n")
    assert code_hash("fakelib_pin") != before
    monkeypatch.delitem(sys.modules, "fakelib_pin", raising=False)  # unimported again afterwards
    cachekey.pin_sources("fakelib_pin")  # imports it
    loaded = code_hash("fakelib_pin")
    (pkg / "__init__.py").write_text("X = 3\n")
    assert code_hash("fakelib_pin") == loaded
    # a new process (the next run) hashes the edited code
    out = subprocess.run([sys.executable, "-c", "from tasks.cachekey import code_hash, pin_sources; "
                          "pin_sources('fakelib_pin'); print(code_hash('fakelib_pin'))"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{ROOT}"})
    assert out.stdout.strip() not in (loaded, before)


def test_a_module_is_hashed_with_what_it_imports(tmp_path, monkeypatch):
    """``pkg.mod`` covers the module and its imports from its package, transitively (a helper's
    helper, an import inside a function): an edit there re-keys, an edit elsewhere does not."""
    pkg = tmp_path / "src" / "fakelib_mc"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import f\nfrom .unused import g\n",
        "a.py": "import json\nfrom .b import h\n\ndef f():\n    from .sub import c\n    return h() + c.k\n",
        "b.py": "def h():\n    return 1\n",
        "unused.py": "def g():\n    return 2\n",
        "sub/__init__.py": "",
        "sub/c.py": "k = 3\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    assert [rel for _, rel in module_closure("fakelib_mc.a")] == ["a.py", "b.py", "sub/__init__.py", "sub/c.py"]
    key = code_hash("fakelib_mc.a")
    for rel in ("unused.py", "__init__.py"):  # not imported by the module: no new key
        (pkg / rel).write_text(files[rel] + "edited = 1\n")
        assert code_hash("fakelib_mc.a") == key
    assert code_hash("fakelib_mc") != code_hash("fakelib_mc.a")  # the package is every file
    for rel in ("b.py", "sub/c.py"):  # a helper's edit re-keys, however deep the import
        (pkg / rel).write_text(files[rel] + "edited = 1\n")
        assert code_hash("fakelib_mc.a") != key
        key = code_hash("fakelib_mc.a")
    with pytest.raises(ValueError, match="fakelib_mc.nope"):
        code_hash("fakelib_mc.nope")


def test_a_run_keys_its_task_modules_by_the_code_it_loaded():
    """The phases stage keys on ``tasks.phases``: an edit to it while a run goes must not file the
    running (old) code's results under the new code's key."""
    out = subprocess.run([sys.executable, "-c", "import tasks.stage; from tasks.cachekey import _PINNED; "
                          "print(sorted(_PINNED)); print('phases.py' in dict(_PINNED['tasks']))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split("\n")[:2] == ["['karel', 'model', 'probes', 'tasks']", "True"]


def test_training_is_not_keyed_by_the_metrics_it_never_imports():
    import tasks.stage  # noqa: F401  (pins the libraries, as in a run)
    from tasks.cachekey import _PINNED

    train = {f"{t}/{r}" for t, r in module_closure("model.train", follow=_PINNED)}
    assert {"model/train.py", "model/transformer.py", "model/optim.py", "karel/semantics.py"} <= train
    assert not {"model/metrics.py", "model/decode.py", "model/phases.py"} & train
    assert "model/decode.py" in {f"{t}/{r}" for t, r in module_closure("model.metrics", follow=_PINNED)}


def test_code_hash_order_insensitive_and_unknown_package(fake_pkg):
    assert code_hash("fakelib_ck", "karel") == code_hash("karel", "fakelib_ck", "karel")
    assert code_hash("fakelib_ck", "karel") != code_hash("karel")
    with pytest.raises(ValueError, match="no_such_pkg_xyz"):
        code_hash("no_such_pkg_xyz")


def test_cache_key_sensitivity(fake_pkg):
    base = cache_key("train", Cfg(), ["abc"], ["fakelib_ck"])
    assert len(base) == 16 and int(base, 16) >= 0
    assert cache_key("train", Cfg(), ["abc"], ["fakelib_ck"]) == base
    # config
    assert cache_key("train", Cfg(n=11), ["abc"], ["fakelib_ck"]) != base
    assert cache_key("train", Cfg(inner=Inner(dims=(64, 256))), ["abc"], ["fakelib_ck"]) != base
    # stage, upstream, packages
    assert cache_key("eval", Cfg(), ["abc"], ["fakelib_ck"]) != base
    assert cache_key("train", Cfg(), ["abd"], ["fakelib_ck"]) != base
    assert cache_key("train", Cfg(), [], ["fakelib_ck"]) != base
    assert cache_key("train", Cfg(), ["abc"], ["fakelib_ck", "karel"]) != base
    # library file
    (fake_pkg / "sub" / "helper.py").write_text("def f():\n    return 3\n")
    assert cache_key("train", Cfg(), ["abc"], ["fakelib_ck"]) != base


def test_a_task_modules_own_code_keys_its_stage(fake_pkg):
    """``own``: the task module's own file counts (its code, not its docstrings), what it imports
    does not (that is ``packages``)."""
    (fake_pkg / "task.py").write_text('"""Doc."""\nfrom .sub.helper import f\n\ndef run():\n    return f() + 1\n')
    base = cache_key("s", Cfg(), [], ["fakelib_ck.sub.helper"], own="fakelib_ck.task")
    assert base != cache_key("s", Cfg(), [], ["fakelib_ck.sub.helper"])
    own = own_code_hash("fakelib_ck.task")
    (fake_pkg / "task.py").write_text('"""Other doc."""\nfrom .sub.helper import f\n\ndef run():\n    return f() + 1\n')
    assert own_code_hash("fakelib_ck.task") == own
    (fake_pkg / "sub" / "helper.py").write_text("def f():\n    return 5\n")
    assert own_code_hash("fakelib_ck.task") == own
    assert cache_key("s", Cfg(), [], ["fakelib_ck.sub.helper"], own="fakelib_ck.task") != base  # via packages
    (fake_pkg / "task.py").write_text('from .sub.helper import f\n\ndef run():\n    return f() + 2\n')
    assert own_code_hash("fakelib_ck.task") != own
    with pytest.raises(ValueError, match="fakelib_ck.nope"):
        own_code_hash("fakelib_ck.nope")


def test_dataclass_and_dict_equivalent():
    d = {"inner": {"dims": [64, 128], "lr": 1e-3}, "name": "x", "n": 10}
    assert cache_key("s", Cfg(), [], []) == cache_key("s", d, [], [])
    assert canonical_json(Cfg()) == canonical_json(d)


def test_unhashable_values_rejected():
    with pytest.raises(TypeError):
        cache_key("s", {"f": object()}, [], [])
    with pytest.raises(ValueError):
        cache_key("s", {"x": float("nan")}, [], [])
    with pytest.raises(TypeError):
        cache_key("s", {1: 2}, [], [])
    with pytest.raises(TypeError):
        cache_key("s", {}, "abc", [])


def test_stable_across_processes_and_hash_seeds(fake_pkg):
    # a private package, so that concurrent edits of karel/ cannot make this flaky
    code = textwrap.dedent("""
        import dataclasses
        from tasks.cachekey import cache_key
        cfg = {"a": 1, "b": {"z": [1, 2], "y": "s"}, "s": {"p", "q", "r"}}
        print(cache_key("st", cfg, ["k1", "k2"], ["fakelib_ck"]))
    """)
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed,
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(fake_pkg.parent)]))
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    assert len(outs) == 1
    from tasks.cachekey import cache_key as ck
    assert ck("st", {"a": 1, "b": {"z": [1, 2], "y": "s"}, "s": {"p", "q", "r"}},
              ["k1", "k2"], ["fakelib_ck"]) in outs


def test_code_hash_from_several_threads_at_once():
    """Prefect computes stage keys on task threads; CPython 3.11's parser is not thread-safe
    (a SystemError once in make test), so the closures parse under a lock, once per source."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["model.train", "model.metrics", "model.decode", "probes", "karel", "tasks.phases"] * 4
    serial = [code_hash(n) for n in names]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(code_hash, names)) == serial


def test_probing_more_checkpoints_reuses_the_dumps():
    """``activations.checkpoints`` picks which checkpoints are dumped, not what a dump holds: it is
    not in a dump's key; what the dump reads (its specs, its programs) is."""
    from dataclasses import replace

    from tasks.activations import activations_key
    from tasks.stage_configs import ActivationConfig

    cfg = ActivationConfig(checkpoints=3)
    key = activations_key(cfg, "data", "ckpt")
    assert activations_key(replace(cfg, checkpoints=7), "data", "ckpt") == key
    assert activations_key(replace(cfg, probe_step0=False), "data", "ckpt") == key
    assert activations_key(replace(cfg, n_train_specs=10), "data", "ckpt") != key
    assert activations_key(replace(cfg, programs="reference"), "data", "ckpt") != key


STAGE_MODULES = ("tasks.dataset", "tasks.training", "tasks.evaluation", "tasks.activations", "tasks.probing",
                 "tasks.phases")


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_every_task_module_a_stage_imports_counts_in_its_key_or_is_plumbing(module):
    """A stage key hashes its task module's own file and its ``HELPERS``; any other task module
    it imports must be plumbing (paths, the store), or an edit there would reuse stale results."""
    import importlib

    from tasks.cachekey import _imported, _module_source
    from tasks.stage import PLUMBING

    _, rel, source = _module_source(module, {})
    imported = {name for name in _imported(source, module, False)
                if name.startswith("tasks.") and _module_source(name, {}) is not None}
    helpers = set(getattr(importlib.import_module(module), "HELPERS", ()))
    assert imported - helpers - set(PLUMBING) == set(), f"{module} imports task modules outside its HELPERS"
    assert helpers <= imported  # a helper it no longer imports would re-key it for nothing


@pytest.mark.parametrize("edited, rekeyed", [
    ("stage_configs.py", (False, True, True, True, True)),  # the stages' device, offsets, layer-mean marker
    ("probe_config.py", (False, False, False, True, True)),  # the probe grids' config: not the evaluations or dumps
])
def test_a_helpers_code_re_keys_the_stages_that_read_it_and_no_other(monkeypatch, edited, rekeyed):
    """An edit to a helper re-keys exactly the stages that read it (training, evaluation, dumps,
    probes, phases): ``tasks.stage_configs`` all but training, ``tasks.probe_config`` the probe
    grids and the phases only."""
    from model.config import smoke
    from tasks import cachekey
    from tasks.activations import activations_key
    from tasks.evaluation import evaluate_key
    from tasks.phases import HELPERS as phases_helpers
    from tasks.probe_config import ProbeConfig
    from tasks.probing import probe_key
    from tasks.stage import stage_key
    from tasks.stage_configs import ActivationConfig, EvalConfig
    from tasks.training import train_key

    keys = lambda: (train_key(*smoke(), "data"), evaluate_key(EvalConfig(), "d", "c"),  # noqa: E731
                    activations_key(ActivationConfig(), "d", "c"), probe_key(ProbeConfig(), "a", "original"),
                    stage_key("phases", {}, [], ["model.phases"], "tasks.phases", phases_helpers))
    before = keys()
    files = cachekey._sources("tasks")
    assert edited in {rel for rel, _ in files}
    monkeypatch.setitem(cachekey._PINNED, "tasks", [(rel, data + b"\nEDITED = 1\n" if rel == edited else data)
                                                   for rel, data in files])
    after = keys()
    assert tuple(a != b for a, b in zip(after, before)) == rekeyed
