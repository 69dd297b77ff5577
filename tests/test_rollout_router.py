"""sglang-router (the real Rust router, PyPI sglang-router) in front of fake SGLang workers: cache-aware affinity
of a chunk's levels, data-parallel spread, results by index, recovery of a worker the router hides or that fails
a request (nothing lost or double-counted). Real SGLang through the router: tests/test_rollout_sglang.py."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recast_mcore.config.rollout import SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.pool import ServerPool

from test_rollout_units import _fake_servers, _StubLaunched

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None, reason="sglang-router not installed"),
]


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    fakes = _fake_servers(2, hang=0)
    cfg = SGLangServerConfig(mode="attach", urls=[f"http://127.0.0.1:{f.server_port}" for f in fakes], use_router=True,
                             request_timeout_s=10, max_retries=2, log_dir=str(tmp_path_factory.mktemp("router")))
    pool = ServerPool(cfg, "", 0, current_weights=lambda: ("/snapshots/v3", 3), after_restart=lambda c: None)
    yield pool, fakes
    pool.close()
    for f in fakes:
        f.shutdown()


def _chunk(c: int, level: int) -> dict:
    prompts = [[1] + [(37 * c + 11 * j + 5 * i) % 997 + 4 for j in range(30)] for i in range(2)]
    seqs = prompts if level == 0 else [p + [4 + k] * level for p in prompts for k in range(4)]
    return {"input_ids": seqs, "rid": f"{c}-{level}"}  # the router re-serializes known fields only (rid: a string)


def _key(result: dict) -> tuple[int, int]:
    c, level = result["echo"]["rid"].split("-")
    return int(c), int(level)


def test_router_keeps_each_chunks_levels_on_one_worker(routed):
    pool, fakes = routed
    where = {}
    for level in range(3):
        out = pool.map([_chunk(c, level) for c in range(12)], lambda client, p: client.post("/generate", p))
        assert [_key(r) for r in out] == [(c, level) for c in range(12)]  # results by index
        for r in out:
            where.setdefault(_key(r)[0], set()).add(r["port"])
    assert all(len(ports) == 1 for ports in where.values()), where  # cache-aware: every level on its worker
    # (whether chunks spread over both workers depends on timing: with threshold 0.01 the shared BOS prefix alone
    # can match, so the router may keep unrelated chunks on one worker while the load stays balanced enough)
    assert pool.router.is_running()


def test_router_failures_are_recovered_and_nothing_is_lost_or_double_counted(routed):
    pool, fakes = routed
    stub = _StubLaunched(fakes[0])
    pool.servers[0] = stub
    fakes[0].state["sick"] = True  # /health and /generate answer 503: the router would silently route around it
    for f in fakes:
        f.state["paths"] = []
        f.state["fail"] = {"/generate": 1}  # and each worker fails one request while healthy
    try:
        out = pool.map([_chunk(c, 0) for c in range(8)], lambda client, p: client.post("/generate", p))
    finally:
        pool.servers[0] = None
    assert [_key(r)[0] for r in out] == list(range(8))
    assert stub.restarted_with == [("/snapshots/v3", 3)]  # the hidden unhealthy worker was restarted
    served = sum(f.state["paths"].count("/generate") for f in fakes)
    assert served == 8 + sum(1 for f in fakes if f.state["fail"]["/generate"] == 0)  # each failure re-sent once


class _ConstrainingFake(BaseHTTPRequestHandler):
    """Answers /generate like SGLang with the trie processor: only the root tokens when the request still carries
    ``sampling_params.custom_params`` (SGLang hands the processor the request only then), any token otherwise."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/generate":
            k, roots = body.get("top_logprobs_num", 1), self.server.roots
            constrained = "custom_params" in body.get("sampling_params", {})
            top = [[-0.5, t, None] for t in roots] + [[None, 0, None]] if constrained else \
                [[-0.5, t, None] for t in range(k)]
            out = [{"meta_info": {"output_top_logprobs": [top[:k]], "weight_version": "0"}} for _ in body["input_ids"]]
        else:
            out = {"success": True}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_engine_refuses_a_router_that_drops_the_trie_params(tmp_path):
    """sglang-router 0.3.2 re-serializes /generate without sampling_params.custom_params: the engine's check
    (one constrained request through the router) sees unconstrained tokens and refuses the router; the same
    check passes when the worker is reached directly."""
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.sglang_engine import RouterUnsupportedError, SGLangRolloutEngine
    from recast_mcore.rollout.testing import random_catalog

    catalog = ItemCatalog.from_vocab(random_catalog(40, [6, 5, 4], seed=3))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _ConstrainingFake)
    fake.roots = catalog.tables["edge_token"][: int(catalog.tables["node_start"][1])].tolist()
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{fake.server_port}"
    try:
        cfg = SGLangServerConfig(mode="attach", urls=[url], use_router=True, request_timeout_s=20,
                                 log_dir=str(tmp_path / "logs"))
        with pytest.raises(RouterUnsupportedError, match="custom_params"):
            SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(tmp_path / "hf"), work_dir=str(tmp_path / "w"))
        direct = SGLangRolloutEngine(SGLangServerConfig(mode="attach", urls=[url], request_timeout_s=20),
                                     WeightSyncConfig(), catalog, str(tmp_path / "hf"), work_dir=str(tmp_path / "w2"))
        direct._check_router_applies_the_trie()  # the check itself passes when the params arrive
        direct.close()
    finally:
        fake.shutdown()
