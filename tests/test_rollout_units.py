"""Rollout engine pieces that need no SGLang server: trie tables, the shipped processor, sampling filters,
the in-process engine against the HF reference, beam search vs exhaustive ranking, configs, registry,
CPU bridges, the server launcher's failure report and the pool's retry/timeout logic (fake HTTP servers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.rollout import RolloutConfig, SamplingConfig, SGLangServerConfig
from recast_mcore.data.trie import ItemTrie
from recast_mcore.rollout import cpu_bridge, server
from recast_mcore.rollout.base import EngineResources, build_rollout_engine
from recast_mcore.rollout.catalog import ItemCatalog, check_prompts
from recast_mcore.rollout.client import RequestRejected, ServerUnavailable
from recast_mcore.rollout.pool import ServerPool
from recast_mcore.rollout.testing import (
    constrained_logprobs, exhaustive_scores, hf_logits_fn, make_tiny_llama, random_catalog,
)
from recast_mcore.rollout.torch_engine import TorchRolloutEngine, filter_top_k_top_p
from recast_mcore.rollout.trie_processor import trie_params, trie_processor_string


@pytest.fixture(scope="module")
def vocab():
    return random_catalog(40, [6, 5, 4], seed=3)


@pytest.fixture(scope="module")
def catalog(vocab):
    return ItemCatalog.from_vocab(vocab)


@pytest.fixture(scope="module")
def model(tmp_path_factory, vocab):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "m", vocab.vocab_size)


def _all_prefixes(items: torch.Tensor, t: int) -> torch.Tensor:
    return torch.unique(items[:, :t], dim=0) if t else torch.zeros(1, 0, dtype=torch.long)


def test_catalog_mask_and_item_ids_match_item_trie(vocab, catalog):
    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    for t in range(vocab.item_len + 1):
        prefixes = _all_prefixes(vocab.item_tokens, t)
        assert torch.equal(catalog.allowed_mask(prefixes.tolist()), trie.next_token_mask(prefixes)), t
    responses = catalog.responses_of(torch.arange(vocab.num_items))
    assert torch.equal(catalog.item_ids(responses), torch.arange(vocab.num_items))
    broken = responses.clone()
    broken[::3, 1] = (broken[::3, 1] + 1 - 4) % 5 + 4 + 6  # another level-1 code: maybe not an item
    assert torch.equal(catalog.item_ids(broken), trie.item_ids(broken))
    assert bool((catalog.item_ids(torch.tensor([[2, 2, 2, 2]])) == -1).all())


def test_processor_ships_by_value_and_masks_rows(tmp_path, catalog):
    """Deserialize exactly like SGLang (dill from the JSON hex) in a process where recast_mcore is unimportable.

    Rows: sampling rows (prefix = output ids), beam-query rows (prefix = the last ``prefix_len`` input ids),
    an off-trie row, and a row without params (left alone)."""
    params = trie_params(catalog.save(tmp_path))
    items = catalog.item_tokens
    prefixes = [[], items[0, :1].tolist(), items[5, :2].tolist(), items[7].tolist(), [0, 0]]
    beam_rows = [([1, 9] + items[3, :2].tolist(), 2, []), ([1] + items[4, :1].tolist(), 1, items[4, 1:2].tolist())]
    code = f"""
import sys, json, dill, torch
from array import array
sys.modules['recast_mcore'] = None
cls = dill.loads(bytes.fromhex(json.loads(sys.stdin.read())['callable']))
def req(inputs, prefix_len, outs):
    r = type('R', (), {{'origin_input_ids': array('q', inputs), 'output_ids': array('q', outs)}})()
    return dict({params!r}, prefix_len=prefix_len, __req__=r)
rows = [req([1, 5], 0, p) for p in {prefixes!r}] + [req(*b) for b in {beam_rows!r}] + [None]
logits = torch.zeros(len(rows), {catalog.vocab_size} + 3)
out = cls()(logits, rows)
print(json.dumps(torch.isfinite(out).tolist()))
"""
    proc = subprocess.run([sys.executable, "-c", code], input=trie_processor_string(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    finite = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    expected = catalog.allowed_mask(prefixes[:4] + [items[3, :2].tolist(), items[4, :2].tolist()])
    assert torch.equal(finite[[0, 1, 2, 3, 5, 6], : catalog.vocab_size], expected)
    assert not finite[:7, catalog.vocab_size :].any()  # padded vocab columns are never allowed
    eos_only = torch.zeros(catalog.vocab_size + 3, dtype=torch.bool)
    eos_only[catalog.eos_id] = True
    assert torch.equal(finite[4], eos_only)  # off-trie prefix: may only stop (client rejects the item)
    assert finite[7].all()  # a row without params is left alone


def test_filter_top_k_top_p_hand_values():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    # nucleus 0.7: keep tokens whose preceding mass is <= 0.7 -> 0.5, 0.3
    assert torch.isfinite(filter_top_k_top_p(logits, -1, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_k_top_p(logits, -1, 0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_top_k_top_p(logits, -1, 1.0)).all()


def test_torch_engine_samples_valid_items_with_reference_logprobs(vocab, catalog, model):
    engine = TorchRolloutEngine(catalog, hf_logits_fn(model), batch_size=7, seed=1)
    prompts = [vocab.encode_prompt([i, (3 * i) % 40, (5 * i + 1) % 40][: 1 + i % 3]) for i in range(6)]
    for sampling in (SamplingConfig(group_size=5), SamplingConfig(group_size=3, temperature=0.7, top_k=2, top_p=0.9)):
        groups = engine.generate(prompts, [[0]] * 6, sampling)
        g = sampling.group_size
        assert groups.responses.shape == (6, g, 4) and groups.num_sampled == 6 * g
        assert bool((groups.item_ids >= 0).all())
        assert bool((groups.responses[..., -1] == vocab.eos_id).all())
        flat = groups.responses.reshape(-1, 4)
        ref = constrained_logprobs(model, catalog, [p for p in prompts for _ in range(g)], flat)
        assert torch.allclose(groups.token_logprobs.reshape(-1, 4), ref, atol=1e-5)
        assert torch.equal(groups.token_logprobs[..., -1], torch.zeros(6, g))  # EOS is forced


def test_torch_beam_search_equals_exhaustive_enumeration(vocab, catalog, model):
    engine = TorchRolloutEngine(catalog, hf_logits_fn(model))
    prompts = [vocab.encode_prompt([1, 2]), vocab.encode_prompt([7])]
    result = engine.beam_search(prompts, beam_width=catalog.num_items)
    for b, prompt in enumerate(prompts):
        exact = exhaustive_scores(model, catalog, prompt).topk(catalog.num_items)
        assert torch.equal(result.item_ids[b], exact.indices)
        assert torch.allclose(result.scores[b], exact.values, atol=1e-5)
    narrow = engine.beam_search(prompts, beam_width=4)
    assert narrow.item_ids.shape == (2, 4) and bool((narrow.item_ids >= 0).all())
    assert bool((narrow.scores[:, :-1] >= narrow.scores[:, 1:]).all())


def test_invalid_prompts_raise_clear_errors(catalog):
    with pytest.raises(ValueError, match="prompt 1 has token ids outside"):
        check_prompts([[1, 4], [1, 999]], catalog.vocab_size)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        check_prompts([[]], catalog.vocab_size)
    with pytest.raises(ValueError, match="non-empty list"):
        check_prompts([], catalog.vocab_size)


def test_config_is_strict(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("engine: torch\nsampling: {group_size: 4, temprature: 1.0}\n")
    with pytest.raises(ConfigError, match="temprature"):
        load_config(RolloutConfig, path)
    path.write_text("engine: vllm\n")
    with pytest.raises(ConfigError, match="'sglang', 'torch'"):
        load_config(RolloutConfig, path)
    path.write_text("sglang: {mode: attach}\n")
    with pytest.raises(ConfigError, match="attach"):
        load_config(RolloutConfig, path)
    cfg = load_config(RolloutConfig, None, ["sampling.top_k=5", "weight_sync.method=tensor"])
    assert cfg.sampling.top_k == 5 and cfg.weight_sync.method == "tensor"


def test_registry_errors(catalog):
    cfg = RolloutConfig(engine="torch")
    with pytest.raises(ValueError, match="needs resources.logits_fn"):
        build_rollout_engine(cfg, EngineResources(catalog=catalog))
    cfg.engine = "nope"
    with pytest.raises(ValueError, match="valid: sglang, torch"):
        build_rollout_engine(cfg, EngineResources(catalog=catalog))
    engine = build_rollout_engine(RolloutConfig(engine="torch"), EngineResources(catalog=catalog, logits_fn=lambda x: x))
    engine.update_weights(None, 1)
    assert engine.policy_version == 1
    with pytest.raises(ValueError, match="must increase"):
        engine.update_weights(None, 1)


def test_cpu_bridges_only_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = cpu_bridge.server_env({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(":") == [str(cpu_bridge.CPU_SERVER_PATH), str(cpu_bridge.SERVER_PATH), "/x"]
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GPU: only the custom_params shim
    assert cpu_bridge.server_env({"PYTHONPATH": "/x"}) == {"PYTHONPATH": f"{cpu_bridge.SERVER_PATH}:/x"}


def test_sgl_kernel_stand_in_matches_reference():
    spec = importlib.util.spec_from_file_location(
        "sgl_kernel_standin", cpu_bridge.CPU_SERVER_PATH / "sgl_kernel" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    req_to_token = torch.zeros(4, 10, dtype=torch.int32)
    pools, starts, ends = torch.tensor([2, 0]), torch.tensor([3, 0]), torch.tensor([5, 4])
    out = torch.arange(100, 106)
    mod.assign_req_to_token_pool_cpu(pools, req_to_token, starts, ends, out, 10)
    assert req_to_token[2, 3:5].tolist() == [100, 101] and req_to_token[0, 0:4].tolist() == [102, 103, 104, 105]
    assert int(req_to_token.count_nonzero()) == 6
    with pytest.raises(NotImplementedError, match="copy_all_layer_kv_cache_cpu"):
        mod.copy_all_layer_kv_cache_cpu()


def test_server_that_cannot_start_reports_its_log_tail(tmp_path, monkeypatch):
    fake = [sys.executable, "-c", "print('loading model...'); print('OSError: no config.json in /nowhere'); raise SystemExit(3)"]
    monkeypatch.setattr(server, "launch_command", lambda *a, **k: fake)
    srv = server.LaunchedServer(SGLangServerConfig(startup_timeout_s=30), "/nowhere", tmp_path / "s.log")
    with pytest.raises(server.ServerStartError, match=r"(?s)exited with code 3.*no config.json in /nowhere"):
        srv.start()


class _FakeSGLang(BaseHTTPRequestHandler):
    """/health 200; /generate echoes the request, hanging on the first ``hang`` calls; /bad -> 400."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(503 if self.server.state.get("sick") else 200)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state = self.server.state
        with state["lock"]:
            state["calls"] += 1
            hang = state["calls"] <= state["hang"]
        if hang:
            time.sleep(3.0)
        code = 400 if self.path == "/bad" else 200
        with state["lock"]:
            state.setdefault("paths", []).append(self.path)
            if state.get("fail", {}).get(self.path, 0) > 0:  # this endpoint answers 500 the next n times
                state["fail"][self.path] -= 1
                code = 500
        if state.get("sick"):
            code = 503
        payload = json.dumps({"echo": body, "port": self.server.server_port, "success": True}).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except BrokenPipeError:  # the client gave up on a hung call: that is the point
            pass


def _fake_servers(n: int, hang: int):
    servers = []
    for _ in range(n):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSGLang)
        srv.state = {"calls": 0, "hang": hang, "lock": threading.Lock()}
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    return servers


def _attach_pool(servers, timeout_s=1.0, retries=2):
    cfg = SGLangServerConfig(mode="attach", urls=[f"http://127.0.0.1:{s.server_port}" for s in servers],
                             request_timeout_s=timeout_s, max_retries=retries)
    return ServerPool(cfg, "", 0, current_weights=lambda: ("", 0), after_restart=lambda c: None)


def test_pool_spreads_chunks_and_retries_a_hung_request_exactly_once():
    servers = _fake_servers(2, hang=1)
    try:
        pool = _attach_pool(servers)
        results = pool.map(list(range(6)), lambda client, p: client.post("/generate", {"p": p}))
        assert [r["echo"]["p"] for r in results] == list(range(6))  # each payload once, in order
        assert {r["port"] for r in results} == {s.server_port for s in servers}  # data-parallel spread
        assert sum(s.state["calls"] for s in servers) == 6 + 2  # one hung call per server was re-sent
        with pytest.raises(RequestRejected, match="HTTP 400"):
            pool.map([0], lambda client, p: client.post("/bad", {}))
        servers[0].state["hang"] = 10**6
        servers[1].state["hang"] = 10**6
        with pytest.raises(ServerUnavailable, match="after 2 retries"):
            _attach_pool(servers, retries=2).map([0], lambda client, p: client.post("/generate", {}))
    finally:
        for s in servers:
            s.shutdown()


def test_a_sample_from_another_weight_version_is_rejected():
    from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine, StaleWeightsError

    engine = object.__new__(SGLangRolloutEngine)  # only the version check, no servers
    engine.policy_version = 3
    engine._check_version({"weight_version": "3"})
    with pytest.raises(StaleWeightsError, match="weight version '2', engine serves 3"):
        engine._check_version({"weight_version": "2"})
    with pytest.raises(StaleWeightsError, match="'default'"):
        engine._check_version({"weight_version": "default"})  # a server nobody labelled
    engine._check_versions([{"weight_version": "3"}] * 4)  # beam answers: one pass over all of them
    with pytest.raises(StaleWeightsError, match=r"version\(s\) \['2'\], engine serves 3"):
        engine._check_versions([{"weight_version": "3"}, {"weight_version": "2"}])


def test_weights_that_do_not_fit_the_served_model_are_rejected_before_sync(tmp_path, model):
    from recast_mcore.rollout.sync_disk import finalize_snapshot, write_shard
    from recast_mcore.rollout.weight_sync import check_matches_template, template_shapes

    model.save_pretrained(str(tmp_path / "hf"))
    shapes = template_shapes(tmp_path / "hf")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    check_matches_template(good, shapes)
    (tmp_path / "v1.tmp").mkdir()
    write_shard(tmp_path / "v1.tmp", "model-s000-b00000.safetensors", list(good.items()))
    snap = finalize_snapshot(tmp_path / "v1.tmp", tmp_path / "v1", {k: "model-s000-b00000.safetensors" for k in good},
                             template_dir=tmp_path / "hf")
    assert (snap / "config.json").is_file() and template_shapes(snap) == shapes
    bad = dict(good)
    bad["lm_head.weight"] = bad["lm_head.weight"][:-1]
    del bad["model.norm.weight"]
    bad["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"(?s)missing \['model.norm.weight'\].*unexpected \['model.extra.weight'\].*lm_head"):
        check_matches_template(bad, shapes)


class _StubLaunched:
    """Stands in for a LaunchedServer whose process is alive; restart() heals the fake HTTP server."""

    def __init__(self, fake):
        self.fake, self.restarted_with, self.log_path = fake, [], None

    def is_running(self):
        return True

    def restart(self, model_path, weight_version):
        self.restarted_with.append((model_path, weight_version))
        self.fake.state["sick"] = False


def test_pool_restarts_a_launched_server_that_stopped_answering_with_the_current_weights():
    (fake,) = _fake_servers(1, hang=0)
    try:
        resynced = []
        cfg = SGLangServerConfig(mode="attach", urls=[f"http://127.0.0.1:{fake.server_port}"], request_timeout_s=2)
        pool = ServerPool(cfg, "", 0, current_weights=lambda: ("/snapshots/v7", 7), after_restart=resynced.append)
        stub = _StubLaunched(fake)
        pool.servers[0] = stub
        fake.state["sick"] = True  # alive process, but /generate and /health answer 503
        out = pool.map([1, 2], lambda client, p: client.post("/generate", {"p": p}))
        assert [r["echo"]["p"] for r in out] == [1, 2]
        assert stub.restarted_with == [("/snapshots/v7", 7)] and pool.restarts == 1
        assert [c.url for c in resynced] == [pool.clients[0].url]  # tensor sync would re-push here
    finally:
        fake.shutdown()


@pytest.mark.gpu
def test_processor_masks_cuda_logits_like_cpu(tmp_path, catalog):
    """CUDA: tables cached on the device, prefixes staged through pinned memory, both mask paths, repeated steps."""
    import dill
    from array import array

    cls = dill.loads(bytes.fromhex(json.loads(trie_processor_string())["callable"]))
    params = trie_params(catalog.save(tmp_path))
    items = catalog.item_tokens
    for prefixes in ([[]] * 3, [[], items[3, :2].tolist(), items[5].tolist(), items[1, :1].tolist()]):
        rows = [dict(params, __req__=SimpleNamespace(origin_input_ids=array("q", [1]), output_ids=array("q", p)))
                for p in prefixes]
        logits = torch.randn(len(rows), catalog.vocab_size + 5, device="cuda")
        out = cls()(logits.clone(), rows)
        assert out.device.type == "cuda"
        allowed = catalog.allowed_mask(prefixes)
        assert torch.equal(torch.isfinite(out).cpu()[:, : catalog.vocab_size], allowed)
        assert torch.equal(out[:, : catalog.vocab_size][allowed.cuda()], logits[:, : catalog.vocab_size][allowed.cuda()])
    assert any(k[1].startswith("cuda") for k in cls.__dict__["_table_cache"])  # tables live on the device


@pytest.mark.gpu
@pytest.mark.parametrize("narrow", [256, 3, 1])
def test_processor_mask_paths_on_cuda_equal_cpu(catalog, vocab, narrow):
    """Every mask path (plain, root window, dense bias rows, ragged/padded slots) on CUDA tables and logits (one
    block, no host sync) gives exactly the CPU result."""
    from array import array

    from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor as P

    host = P._prepare(catalog.tables, narrow=narrow)
    g = torch.Generator().manual_seed(2)
    picks = torch.randint(0, vocab.num_items, (24,), generator=g)
    for depths in ([0] * 5, [1] * 5, [0, 1, 2, 3] * 6, [0, 2, 3, 0, 2] * 3, [3, 3, 2]):
        prefixes = [vocab.item_tokens[int(i), :d].tolist() for i, d in zip(picks, depths)]
        lengths, flat = array("q", map(len, prefixes)), array("q", [t for p in prefixes for t in p])
        logits = torch.randn(len(prefixes), vocab.vocab_size + 3, generator=g)
        want = P._mask_logits(host, logits.clone(), P._stage(lengths, flat, torch.device("cpu")), lengths)
        # copied after a CPU step, as _tables_for copies cached CPU tables (non-tensors, e.g. scratch, by reference)
        cuda = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in host.items()}
        got = P._mask_logits(cuda, logits.cuda(), P._stage(lengths, flat, torch.device("cuda")), lengths)
        assert torch.equal(got.cpu(), want), depths


@pytest.mark.parametrize("narrow,block_bytes", [(256, 1 << 24), (3, 1 << 24), (1, 1 << 24), (256, 1), (3, 2500), (1, 700)])
def test_processor_mask_paths_keep_allowed_logits_exactly(catalog, vocab, narrow, block_bytes):
    """Narrow (gather/fill/scatter), dense (bias rows) and root (broadcast) paths, in one row block or many (a block
    of 1 row, of ~11 rows with dense rows split across blocks): allowed logits bit-identical, everything else -inf,
    equal to ItemTrie on mixed-depth batches with a padded vocabulary; slots padded or ragged."""
    from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor as P

    g = torch.Generator().manual_seed(0)
    for ragged in (0.0, 1.0):  # slots padded to the widest row, or ragged per row
        _check_mask_paths(P._prepare(catalog.tables, narrow=narrow, block_bytes=block_bytes, ragged=ragged), vocab, g)


@pytest.mark.parametrize("narrow", [256, 3])
def test_processor_mask_paths_when_the_roots_children_leave_gaps(vocab, narrow):
    """A catalog whose first tokens are not one contiguous range (no items under one level-0 code): the root
    takes the broadcast-add / bias-row path instead of keeping a token window."""
    from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor as P, build_trie_tables

    first = vocab.item_tokens[:, 0]
    gapped = vocab.item_tokens[first != torch.unique(first)[1]]  # drop every item under the 2nd level-0 code
    sub = SimpleNamespace(item_tokens=gapped, vocab_size=vocab.vocab_size, eos_id=vocab.eos_id, num_items=len(gapped))
    tables = build_trie_tables(gapped, vocab.vocab_size, vocab.eos_id)
    g = torch.Generator().manual_seed(1)
    for ragged in (0.0, 1.0):
        prepared = P._prepare(tables, narrow=narrow, ragged=ragged)
        assert prepared["window_full"][0] is False
        _check_mask_paths(prepared, sub, g)


def _check_mask_paths(tables, vocab, g):
    from array import array

    from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor as P

    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    picks = torch.randint(0, vocab.num_items, (24,), generator=g)
    for depths in ([0] * 5, [1] * 5, [0, 1, 2, 3] * 6, [2, 3, 3, 1], [3, 0, 0, 2, 1, 1, 0, 3] * 3, [0, 2, 3, 0, 2] * 3):
        prefixes = [vocab.item_tokens[int(i), :d].tolist() for i, d in zip(picks, depths)]
        lengths, flat = array("q", map(len, prefixes)), array("q", [t for p in prefixes for t in p])
        logits = torch.randn(len(prefixes), vocab.vocab_size + 2, generator=g)
        out = P._mask_logits(tables, logits.clone(), P._stage(lengths, flat, torch.device("cpu")), lengths)
        allowed = torch.stack([trie.next_token_mask(torch.tensor([p], dtype=torch.long))[0] for p in prefixes])
        allowed = torch.cat([allowed, torch.zeros(len(prefixes), 2, dtype=torch.bool)], 1)
        assert torch.equal(out[allowed], logits[allowed]), depths
        assert bool(torch.isneginf(out[~allowed]).all()), depths
        again = P._mask_logits(tables, logits.clone(), P._stage(lengths, flat, torch.device("cpu")), lengths)
        assert torch.equal(again, out), depths  # the tables are not changed by a step
    # Off-trie rows (a prefix that leaves the trie at a dense depth, one longer than an item) may only emit EOS,
    # next to root and on-trie rows in the same blocks.
    item = vocab.item_tokens[0].tolist()
    used = set(vocab.item_tokens[:, :2].flatten().tolist()) | {vocab.eos_id}
    bad = next(t for t in range(vocab.vocab_size) if t not in used)  # neither a first nor a second item token
    prefixes = [[], item[:1] + [bad], item + [item[0]], item[:1], [], [bad]]
    lengths, flat = array("q", map(len, prefixes)), array("q", [t for p in prefixes for t in p])
    logits = torch.randn(len(prefixes), vocab.vocab_size + 2, generator=g)
    out = P._mask_logits(tables, logits.clone(), P._stage(lengths, flat, torch.device("cpu")), lengths)
    for r in (1, 2, 5):
        assert torch.isfinite(out[r]).nonzero().squeeze(1).tolist() == [vocab.eos_id], prefixes[r]
    for r in (0, 3, 4):
        allowed = trie.next_token_mask(torch.tensor([prefixes[r]], dtype=torch.long))[0]
        assert torch.equal(torch.isfinite(out[r, : vocab.vocab_size]), allowed), prefixes[r]


@pytest.mark.parametrize("failures", [1, 3])
def test_failed_weight_update_on_a_healthy_server_is_retried_then_the_server_is_restarted(failures):
    """/health answers 200 but /update_weights_from_disk answers 500: retried max_retries (2) times; still failing
    -> restarted from the current weights and re-synced. Never skipped silently."""
    (fake,) = _fake_servers(1, hang=0)
    try:
        resynced = []
        cfg = SGLangServerConfig(mode="attach", urls=[f"http://127.0.0.1:{fake.server_port}"], request_timeout_s=2,
                                 max_retries=2)
        pool = ServerPool(cfg, "", 0, current_weights=lambda: ("/snapshots/v8", 8), after_restart=resynced.append)
        stub = _StubLaunched(fake)
        pool.servers[0] = stub
        fake.state["fail"] = {"/update_weights_from_disk": failures}
        pool.broadcast(lambda c: c.update_weights_from_disk("/snapshots/v8", 8))
        tries = fake.state["paths"].count("/update_weights_from_disk")
        assert pool.update_failures == min(failures, 3)
        if failures < 3:  # a retry succeeded: no restart
            assert tries == failures + 1 and stub.restarted_with == [] and pool.restarts == 0
        else:
            assert tries == 3 and stub.restarted_with == [("/snapshots/v8", 8)] and pool.restarts == 1
            assert [c.url for c in resynced] == [pool.clients[0].url]
    finally:
        fake.shutdown()


def test_failed_weight_update_on_an_attached_server_is_never_skipped_silently():
    servers = _fake_servers(2, hang=0)
    try:
        pool = _attach_pool(servers, retries=1)
        for s in servers:
            s.state["fail"] = {"/update_weights_from_disk": 10}
        with pytest.raises(ServerUnavailable, match="could not be updated"):
            pool.broadcast(lambda c: c.update_weights_from_disk("/m", 1))
        assert pool.live == [1]  # the first was dropped from rotation (logged); the last one raises
        assert servers[0].state["paths"].count("/update_weights_from_disk") == 2  # tried, retried once
    finally:
        for s in servers:
            s.shutdown()


def _simulate_scheduler(catalog, path, prompts, delayed: bool, with_kv: bool = True) -> torch.Tensor:
    """SGLang's overlap loop on fake requests: step t's KV slot is allocated before its sampling; the tokens
    sampled at step t-1 reach ``output_ids`` after step t's sampling (overlap) or before it (delayed sampling,
    ``SGLANG_ENABLE_DELAY_SAMPLE=1``). A fixed random 'model'; the shipped processor masks; greedy picks."""
    from array import array

    import dill

    cls = dill.loads(bytes.fromhex(json.loads(trie_processor_string())["callable"]))
    reqs = [SimpleNamespace(origin_input_ids=array("q", p), output_ids=array("q"),
                            kv=SimpleNamespace(kv_allocated_len=len(p))) for p in prompts]
    if not with_kv:
        for r in reqs:
            del r.kv
    params = [dict(trie_params(path), __req__=r) for r in reqs]
    g = torch.Generator().manual_seed(0)
    pending = None
    for t in range(catalog.response_len):
        if t > 0 and with_kv:
            for r in reqs:
                r.kv.kv_allocated_len += 1  # prepare_for_decode: the slot of the token decoded now
        if delayed and pending is not None:
            for r, tok in zip(reqs, pending):
                r.output_ids.append(tok)  # previous result processed before sampling
            pending = None
        logits = torch.randn(len(reqs), catalog.vocab_size, generator=g)
        sampled = cls()(logits, params).argmax(1).tolist()
        if pending is not None:
            for r, tok in zip(reqs, pending):
                r.output_ids.append(tok)  # overlap: the previous result lands after this step's sampling
        pending = sampled
    for r, tok in zip(reqs, pending):
        r.output_ids.append(tok)
    return torch.tensor([list(r.output_ids) for r in reqs])


def test_overlap_lag_is_detected_and_delayed_sampling_is_exact(tmp_path, catalog):
    """CPU simulation of the overlap scheduler's lagging output ids (the GPU case runs in test_rollout_gpu.py)."""
    path = catalog.save(tmp_path)
    prompts = [[1, 5 + i] for i in range(16)]
    exact = _simulate_scheduler(catalog, path, prompts, delayed=True)
    assert bool((catalog.item_ids(exact) >= 0).all()) and bool((exact[:, -1] == catalog.eos_id).all())
    lagging = _simulate_scheduler(catalog, path, prompts, delayed=False)
    assert bool((lagging[:, 1] == catalog.eos_id).all())  # the guard: a lagging row may only stop -> client error
    unguarded = _simulate_scheduler(catalog, path, prompts, delayed=False, with_kv=False)
    assert bool((catalog.item_ids(unguarded) < 0).any())  # what the lag does without delayed sampling or guard
