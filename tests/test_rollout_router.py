"""sglang-router (the real Rust router, PyPI sglang-router) in front of fake SGLang workers: cache-aware affinity
of a chunk's levels, data-parallel spread, results by index, recovery of a worker the router hides or that fails
a request (nothing lost or double-counted). Real SGLang through the router: tests/test_rollout_sglang.py."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _router_health(pool)[pool.clients[0].url]:
        time.sleep(0.5)  # the router's health check (every 2 s) marks it; the pool reads that before each map
    assert not _router_health(pool)[pool.clients[0].url]
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


def _router_health(pool) -> dict[str, bool]:
    workers = pool.router_client.session.get(pool.router.url + "/workers", timeout=10).json()["workers"]
    return {w["url"]: w["is_healthy"] for w in workers}


class _ConstrainingFake(BaseHTTPRequestHandler):
    """Answers /generate like SGLang 0.5.23 with our trie processor (the shipped string, run here on zero logits):
    the processor gets the request object only when ``sampling_params.custom_params`` is a dict (SGLang's rule), or
    always with ``server.shim`` (the custom_params shim); it records each request's Authorization header and, like
    ``--api-key``, answers 401 to any path but /health without ``Bearer <server.key>``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self._send(200 if self.path == "/health" or self._authorized() else 401, {})

    def _authorized(self) -> bool:
        return not self.server.key or self.headers.get("Authorization") == f"Bearer {self.server.key}"

    def _send(self, code: int, out) -> None:
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if not self._authorized():
            return self._send(401, {"error": "unauthorized"})
        if self.path != "/generate":
            return self._send(200, {"success": True})
        import dill
        import torch

        cls = dill.loads(bytes.fromhex(json.loads(body["custom_logit_processor"])["callable"]))
        given = isinstance(body.get("sampling_params", {}).get("custom_params"), dict) or self.server.shim
        out = []
        for ids in body["input_ids"]:
            req = SimpleNamespace(origin_input_ids=array("q", ids), output_ids=array("q"))
            logits = cls()(torch.zeros(1, self.server.vocab), [{"__req__": req} if given else None])[0]
            allowed = torch.isfinite(logits).nonzero().squeeze(1).tolist()
            top = [[-0.5, t, None] for t in allowed] + [[None, t, None] for t in range(self.server.vocab)
                                                          if t not in allowed]
            out.append({"meta_info": {"output_top_logprobs": [top[: body.get("top_logprobs_num", 1)]],
                                      "weight_version": "0"}})
        self._send(200, out)


def _constraining_fake(catalog, key: str, shim: bool) -> ThreadingHTTPServer:
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _ConstrainingFake)
    fake.vocab, fake.key, fake.shim, fake.seen = catalog.vocab_size, key, shim, []
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    return fake


def test_router_serves_the_trie_only_with_the_shim_and_carries_the_key_only_in_the_header(tmp_path):
    """sglang-router 0.3.2 re-serializes /generate without sampling_params.custom_params: a worker without the
    shim hands the processor no request, the engine's check (one constrained request through the router) sees EOS
    only and refuses the router with the PYTHONPATH to use; with the shim the same engine is built. The API key
    reaches the worker in the Authorization header the router forwards; it is on neither the router's command
    line nor its environment, and a request through the router without it is refused by the worker."""
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.client import RequestRejected, SGLangClient
    from recast_mcore.rollout.cpu_bridge import SERVER_PATH
    from recast_mcore.rollout.sglang_engine import RouterUnsupportedError, SGLangRolloutEngine
    from recast_mcore.rollout.testing import random_catalog

    catalog = ItemCatalog.from_vocab(random_catalog(40, [6, 5, 4], seed=3))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    key = "k-" + "x" * 30
    plain, shimmed = _constraining_fake(catalog, key, shim=False), _constraining_fake(catalog, key, shim=True)
    try:
        def engine(fake, name):
            cfg = SGLangServerConfig(mode="attach", urls=[f"http://127.0.0.1:{fake.server_port}"], use_router=True,
                                     request_timeout_s=20, log_dir=str(tmp_path / f"logs-{name}"))
            return SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(tmp_path / "hf"), api_key=key,
                                       work_dir=str(tmp_path / f"w-{name}"))

        with pytest.raises(RouterUnsupportedError, match=f"PYTHONPATH={SERVER_PATH}"):
            engine(plain, "plain")
        assert ("/generate", f"Bearer {key}") in plain.seen  # the request did reach the worker, with the key
        routed = engine(shimmed, "shim")
        try:
            pid = routed.pool.router.proc.pid
            for name in ("cmdline", "environ"):
                assert key.encode() not in Path(f"/proc/{pid}/{name}").read_bytes(), name
            gens = [h for p, h in shimmed.seen if p == "/generate"]
            assert gens and all(h == f"Bearer {key}" for h in gens)
            keyless = SGLangClient(routed.pool.router.url, 20)
            with pytest.raises(RequestRejected, match="401"):
                keyless.generate({"input_ids": [[1]], "sampling_params": {"max_new_tokens": 1}})
        finally:
            routed.close()
    finally:
        plain.shutdown()
        shimmed.shutdown()
