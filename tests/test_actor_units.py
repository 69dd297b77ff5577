"""Fast in-process tests of the actor's pure parts (no process groups, no CPU patches applied here)."""

import math
import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.config.actor import ModelConfig, ParallelConfig
from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.signal.batch import Role

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist"))
from actor_common import catalog, contrast_batch, grpo_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_plan_update_keeps_groups_whole_and_shapes_equal():
    from recast_mcore.actor.microbatch import plan_update

    vocab, _ = catalog()
    batch = grpo_batch(vocab, groups=5, group_size=4, seed=0)
    plans = [plan_update(batch, 2, r, micro_batch_size=6, max_tokens_per_micro_batch=0) for r in range(2)]
    assert len(plans[0].micro_batches) == len(plans[1].micro_batches)  # same K on every DP rank
    seen = []
    for plan in plans:
        # DP shares: 2 and 3 groups of 4; budget 6 rows -> K=3 micro-batches of one group each
        assert plan.rows == 4 and len(plan.micro_batches) == 3
        for mb in plan.micro_batches:
            assert mb.num_sequences == 4  # equal size (pipeline schedules need it); rank 0's 3rd is all PAD
            real = mb.group_index[mb.roles != Role.PAD].tolist()
            for g in set(real):
                assert real.count(g) == 4  # a group is never split
            seen += real
            pad = mb.roles == Role.PAD
            assert not mb.token_mask[pad].any() and not mb.weights[pad].any()
    assert sorted(seen) == sorted(batch.group_index.tolist())  # every row trained exactly once


def test_plan_update_balances_instead_of_padding_to_the_budget():
    from recast_mcore.actor.microbatch import plan_update

    vocab, _ = catalog()
    batch = grpo_batch(vocab, groups=8, group_size=16, seed=0)  # 128 rows, budget 117 rows
    plan = plan_update(batch, 1, 0, micro_batch_size=117, max_tokens_per_micro_batch=0, equal_rows=False)
    assert [mb.num_sequences for mb in plan.micro_batches] == [64, 64]  # not 117 + 117 padded
    assert not any((mb.roles == Role.PAD).any() for mb in plan.micro_batches)


def test_plan_update_contrast_pairs_stay_inside_micro_batches():
    from recast_mcore.actor.microbatch import plan_update

    vocab, _ = catalog()
    batch = contrast_batch(vocab, groups=5, seed=1)
    plan = plan_update(batch, 1, 0, micro_batch_size=4, max_tokens_per_micro_batch=0, num_micro_batches_multiple=2)
    assert len(plan.micro_batches) % 2 == 0
    assert sum(mb.num_pairs for mb in plan.micro_batches) == batch.num_pairs


def test_micro_batch_size_never_below_a_group():
    from recast_mcore.actor.microbatch import micro_batch_rows

    assert micro_batch_rows(max_group=64, seq_len=20, micro_batch_size=8, max_tokens=0) == 64
    assert micro_batch_rows(max_group=2, seq_len=20, micro_batch_size=0, max_tokens=200) == 10


def test_pack_rows_right_pads_and_points_at_predicting_logits():
    from recast_mcore.actor.microbatch import pack_rows

    packed = pack_rows([[1, 5], [1, 6, 7, 8]], torch.tensor([[9, 2], [10, 2]]), seq_len=7, pad_id=0)
    assert packed.tokens.tolist() == [[1, 5, 9, 2, 0, 0, 0], [1, 6, 7, 8, 10, 2, 0]]
    assert packed.response_positions.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="sequence length 5"):
        pack_rows([[1, 6, 7, 8]], torch.tensor([[10, 2]]), seq_len=5, pad_id=0)


def test_mask_logits_keeps_real_allowed_ids_of_this_vocab_shard():
    """The vocab-parallel losses see -inf outside [0, V) and outside the allowed set, on any shard."""
    from recast_mcore.actor.forward_backward import check_allowed, mask_logits

    z = torch.randn(2, 3, 8)  # a full padded vocabulary Vp = 8 with V = 6
    allowed = torch.zeros(2, 3, 6, dtype=torch.bool)
    allowed[..., 1:4] = True
    allowed[1, 2, 5] = True
    y = torch.tensor([[1, 2, 3], [3, 3, 5]])
    full = mask_logits(z, 0, 6, allowed)
    lp = torch.log_softmax(full, -1).gather(2, y[..., None]).squeeze(-1)
    want = z[..., 1:4].clone()
    ref = torch.log_softmax(want, -1).gather(2, (y.clamp(max=3) - 1)[..., None]).squeeze(-1)
    ref[1, 2] = z[1, 2, 5] - torch.logsumexp(torch.cat([z[1, 2, 1:4], z[1, 2, 5:6]]), 0)
    torch.testing.assert_close(lp, ref)
    # two TP shards of width 4 reproduce the full mask; the unconstrained mask drops only ids >= V
    shards = torch.cat([mask_logits(z[..., :4], 0, 6, allowed), mask_logits(z[..., 4:], 4, 6, allowed)], -1)
    assert torch.equal(shards, full)
    assert torch.isinf(mask_logits(z, 0, 6)[..., 6:]).all() and torch.isfinite(mask_logits(z, 0, 6)[..., :6]).all()
    check_allowed(y, allowed)
    with pytest.raises(ValueError, match="not allowed by the item trie"):
        check_allowed(torch.tensor([[0, 2, 3], [3, 3, 1]]), allowed)


def test_fp8_and_te_requests_fail_clearly_on_cpu():
    from recast_mcore.actor.model import use_transformer_engine

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(RuntimeError, match="fp8=e4m3 needs Transformer Engine on a CUDA GPU"):
        use_transformer_engine(ModelConfig(fp8="e4m3", params_dtype="bf16"))
    with pytest.raises(RuntimeError, match="transformer_impl=transformer_engine"):
        use_transformer_engine(ModelConfig(transformer_impl="transformer_engine"))
    assert use_transformer_engine(ModelConfig()) is False


def test_config_validation_and_example_shapes():
    with pytest.raises(ValueError, match="not a multiple of num_query_groups"):
        ModelConfig(num_attention_heads=4, num_query_groups=3).validate()
    with pytest.raises(ValueError, match="virtual_pipeline_parallel > 1 needs pipeline_parallel > 1"):
        ParallelConfig(virtual_pipeline_parallel=2).validate()
    shapes = {p.stem: load_config(ModelConfig, p) for p in (ROOT / "examples/models").glob("*.yaml")}
    assert {"tiny-cpu", "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"} <= shapes.keys()
    q8 = shapes["qwen3-8b"]
    assert (q8.num_layers, q8.hidden_size, q8.head_dim, q8.tie_embeddings) == (36, 4096, 128, False)
    with pytest.raises(ConfigError, match="unknown key 'hidden'"):
        from recast_mcore.config.base import from_dict

        from_dict(ModelConfig, {"hidden": 3})


def test_flops_formula_by_hand():
    from recast_mcore.actor.instrument import train_flops_per_sequence

    cfg = ModelConfig(num_layers=1, hidden_size=4, ffn_hidden_size=8, num_attention_heads=2, num_query_groups=1)
    # h=2: qkv 4*(2+2)*2=32, proj 2*2*4=16, mlp 3*4*8=96 -> 144; logits 4*10=40 -> 184 params
    s = 3
    forward = 2 * s * 184 + 1 * 4 * s * s * 2 * 2
    assert math.isclose(train_flops_per_sequence(cfg, s, 10), 3 * forward)


def test_single_process_group_can_be_created_again_in_the_same_process(tmp_path):
    """A tool run in-process after another one (init, destroy, init) keeps the socket-free world-size-1 store.

    Regression: the first init exported RANK/WORLD_SIZE, so the second took the multi-launcher branch and failed
    with KeyError 'MASTER_ADDR' (seen when recast-eval and convert_checkpoint ran in one pytest process).
    """
    import os
    import subprocess

    script = (
        "import os\n"
        "from datetime import timedelta\n"
        "import torch.distributed as dist\n"
        "from recast_mcore.actor.parallel import init_default_group\n"
        "for _ in range(2):\n"
        "    init_default_group('gloo', timedelta(seconds=30))\n"
        "    assert dist.get_world_size() == 1 and dist.get_rank() == 0\n"
        "    dist.destroy_process_group()\n"
        "print('ok', os.environ['RANK'], os.environ['WORLD_SIZE'], 'MASTER_ADDR' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "0", "1", "False"]
