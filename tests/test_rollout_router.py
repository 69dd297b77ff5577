"""sglang-router (the real Rust router, PyPI sglang-router) in front of fake SGLang workers: cache-aware affinity
of a chunk's levels, data-parallel spread, results by index, recovery of a worker the router hides or that fails
a request (nothing lost or double-counted). Real SGLang through the router: tests/test_rollout_sglang.py."""

from __future__ import annotations

import importlib.util

import pytest

from recast_mcore.config.rollout import SGLangServerConfig
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


def test_router_keeps_each_chunks_levels_on_one_worker_and_spreads_chunks(routed):
    pool, fakes = routed
    where = {}
    for level in range(3):
        out = pool.map([_chunk(c, level) for c in range(12)], lambda client, p: client.post("/generate", p))
        assert [_key(r) for r in out] == [(c, level) for c in range(12)]  # results by index
        for r in out:
            where.setdefault(_key(r)[0], set()).add(r["port"])
    assert all(len(ports) == 1 for ports in where.values()), where  # cache-aware: every level on its worker
    assert {p for ports in where.values() for p in ports} == {f.server_port for f in fakes}  # both workers used
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
