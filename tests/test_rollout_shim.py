"""What makes generation servable through sglang-router (issue 10): the trie processor strings that carry the
catalog and prefix length themselves (no ``custom_params`` content), and the server-side ``custom_params`` shim
(rollout/server_path/recast_sglang_shim.py). Real SGLang's ``Req`` with and without the shim: the ``sglang`` test
at the end; through the real router in front of the real server: tests/test_rollout_sglang.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.cpu_bridge import CPU_SERVER_PATH, SERVER_PATH
from recast_mcore.rollout.testing import random_catalog
from recast_mcore.rollout.trie_processor import trie_processor_string


def _shim():
    spec = importlib.util.spec_from_file_location("recast_sglang_shim_under_test", SERVER_PATH / "recast_sglang_shim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalog():
    return ItemCatalog.from_vocab(random_catalog(40, [6, 5, 4], seed=3))


def test_baked_processor_strings_mask_without_custom_params_and_share_tables(tmp_path, catalog):
    """Deserialized like SGLang in a process where recast_mcore is unimportable: the strings of prefix_len 0 and
    2 mask rows that carry only ``__req__`` (what the shim gives) exactly like the client-side mask; both classes
    use one owner, so the tables are loaded once; rows without ``__req__`` (no shim) may only emit EOS."""
    path = catalog.save(tmp_path)
    items = catalog.item_tokens
    sampling = [[], items[0, :1].tolist(), items[5, :2].tolist(), items[7].tolist(), [0, 0]]
    beam = [([1, 9] + items[3, :2].tolist(), []), ([1] + items[4, :2].tolist(), items[4, 2:3].tolist())]
    code = f"""
import sys, json, dill, torch
from array import array
sys.modules['recast_mcore'] = None
strings = json.loads(sys.stdin.read())
sampler, beamer = [dill.loads(bytes.fromhex(json.loads(s)['callable'])) for s in strings]
def req(inputs, outs):
    return {{'__req__': type('R', (), {{'origin_input_ids': array('q', inputs), 'output_ids': array('q', outs)}})()}}
v = {catalog.vocab_size} + 3
a = sampler()(torch.zeros(5, v), [req([1, 5], p) for p in {sampling!r}])
b = beamer()(torch.zeros(2, v), [req(*x) for x in {beam!r}])
c = sampler()(torch.zeros(2, v), [None, {{}}])  # through the router to a worker without the shim
owner = sampler._owner()
print(json.dumps({{"finite": torch.isfinite(torch.cat([a, b, c])).tolist(), "same_owner": owner is beamer._owner(),
                  "tables": len(owner.__dict__.get('_table_cache', {{}})), "beamer_own": '_table_cache' in beamer.__dict__}}))
"""
    strings = json.dumps([trie_processor_string(path, 0), trie_processor_string(path, 2)])
    proc = subprocess.run([sys.executable, "-c", code], input=strings, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    finite = torch.tensor(out["finite"])
    expected = catalog.allowed_mask(sampling[:4] + [items[3, :2].tolist(), items[4, :3].tolist()])
    assert torch.equal(finite[[0, 1, 2, 3, 5, 6], : catalog.vocab_size], expected)
    assert not finite[:, catalog.vocab_size :].any()  # padded vocab columns are never allowed
    eos_only = torch.zeros(catalog.vocab_size + 3, dtype=torch.bool)
    eos_only[catalog.eos_id] = True
    for r in (4, 7, 8):  # off-trie prefix; no request object (router, no shim): may only stop
        assert torch.equal(finite[r], eos_only), r
    assert out["same_owner"] and out["tables"] == 1 and not out["beamer_own"]  # one table load for both strings


def test_processor_strings_differ_only_by_their_baked_values(tmp_path, catalog):
    path = catalog.save(tmp_path)
    s0, s2 = trie_processor_string(path, 0), trie_processor_string(path, 2)
    assert s0 == trie_processor_string(path, 0) and s0 != s2  # one string per (catalog, prefix_len): SGLang caches it
    with pytest.raises(ValueError, match="save_trie_tables"):
        trie_processor_string(tmp_path / "other.pt", 0)


class _Params:
    def __init__(self, custom_params=None):
        self.custom_params = custom_params


def _fake_schedule_batch():
    class Req:  # the shape of SGLang 0.5.23's Req.__init__ (sampling_params 4th, custom_logit_processor keyword)
        def __init__(self, rid, origin_input_text, origin_input_ids, sampling_params, return_logprob=False,
                     custom_logit_processor=None):
            self.sampling_params = sampling_params
            if custom_logit_processor is not None and isinstance(sampling_params.custom_params, dict):
                sampling_params = _Params(sampling_params.custom_params | {"__req__": self})
            self.sampling_params = sampling_params

    return type(sys)("fake_schedule_batch"), Req


def test_shim_gives_a_processor_request_an_empty_custom_params_dict_and_nothing_else(capsys):
    shim = _shim()
    module, req_cls = _fake_schedule_batch()
    module.Req = req_cls
    assert shim.patch_module(module) and shim.patch_module(module)  # idempotent
    shared = _Params()
    routed = module.Req("r", "", [1], shared, custom_logit_processor="p")
    assert set(routed.sampling_params.custom_params) == {"__req__"} and shared.custom_params is None  # a copy
    by_position = module.Req("r", "", [1], _Params(), False, "p")
    assert "__req__" in by_position.sampling_params.custom_params
    assert module.Req("r", "", [1], sampling_params=_Params(), custom_logit_processor="p").sampling_params.custom_params
    assert module.Req("r", "", [1], _Params()).sampling_params.custom_params is None  # no processor: untouched
    given = module.Req("r", "", [1], _Params({"x": 1}), custom_logit_processor="p").sampling_params.custom_params
    assert given["x"] == 1 and "__req__" in given
    drifted, _ = _fake_schedule_batch()
    assert not shim.patch_module(drifted)  # no Req: version drift is reported, nothing patched
    assert "Req not found" in capsys.readouterr().err
    drifted.Req = type("Req", (), {"__init__": lambda self, rid, params: None})
    assert not shim.patch_module(drifted)  # a changed signature: reported, nothing patched
    assert "lacks sampling_params" in capsys.readouterr().err


def test_shim_import_hook_patches_the_module_when_it_loads(tmp_path, monkeypatch):
    (tmp_path / "shim_target_mod.py").write_text(
        "class Req:\n"
        "    def __init__(self, rid, text, ids, sampling_params, custom_logit_processor=None):\n"
        "        self.sampling_params = sampling_params\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shim = _shim()
    before = list(sys.meta_path)
    try:
        shim.install("shim_target_mod")
        shim.install("shim_target_mod")  # one hook only
        assert len(sys.meta_path) == len(before) + 1
        import shim_target_mod

        out = shim_target_mod.Req("r", "", [1], _Params(), custom_logit_processor="p")
        assert out.sampling_params.custom_params == {}
    finally:
        sys.meta_path[:] = before
        sys.modules.pop("shim_target_mod", None)


@pytest.mark.sglang
def test_real_sglang_req_hands_the_request_only_with_the_shim():
    """SGLang 0.5.23's own Req: ``custom_params = {}`` (what the engine sends) gets ``__req__``; without the shim a
    processor request without custom_params (what sglang-router forwards) gets none, with the shim it does (one import of sglang: the shim patches the loaded
    module; the PYTHONPATH/sitecustomize route into a real server's scheduler is what
    tests/test_rollout_sglang.py::test_router_serves_constrained_sampling_and_beam_search exercises)."""
    code = f"""
import importlib.util, sys
from array import array
from sglang.srt.managers import schedule_batch
from sglang.srt.sampling.sampling_params import SamplingParams
def has_req(**params):
    sp = SamplingParams(max_new_tokens=1, **params)
    r = schedule_batch.Req('r', '', array('q', [1, 2]), sp, custom_logit_processor='p')
    return isinstance(r.sampling_params.custom_params, dict) and '__req__' in r.sampling_params.custom_params
assert has_req(custom_params={{}})  # what the engine sends: the pool path needs no shim
before = has_req()
spec = importlib.util.spec_from_file_location('shim', {str(SERVER_PATH / "recast_sglang_shim.py")!r})
shim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shim)
shim.install()
print(before, has_req())
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(CPU_SERVER_PATH), SGLANG_USE_CPU_ENGINE="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False True"
    assert "custom_params={}" in proc.stderr  # the patch announces itself in the server log


def test_server_path_sitecustomize_installs_the_shim_and_runs_the_one_it_shadows(tmp_path):
    """What a launched GPU server's interpreter does at start-up (``server_path`` first on PYTHONPATH): the shim's
    import hook is in place before any sglang import, and an image's own sitecustomize further down still runs."""
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['IMAGE_SITECUSTOMIZE_RAN'] = '1'\n")
    code = ("import os, sys; print(os.environ.get('IMAGE_SITECUSTOMIZE_RAN'), 'recast_sglang_shim' in sys.modules, "
            "any(type(f).__name__ == '_PatchAfterLoad' for f in sys.meta_path))")
    env = dict(os.environ, PYTHONPATH=f"{SERVER_PATH}:{tmp_path}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "True", "True"]
