"""Pure unit tests of GPU-readiness pieces: sequence layouts, MFU/memory accounting, the non-finite step guard,
the performance-switch configs (no process groups; hand-computed values)."""

import math

import pytest
import torch

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import ConfigError, from_dict

PROMPTS = [[1, 5], [1, 6, 7, 8], [1], [1, 9, 9]]
RESP = torch.tensor([[20, 2], [21, 2], [22, 2], [23, 2]])  # T = 2 -> lengths 4, 6, 3, 5


def test_padded_layout_points_at_predicting_logits():
    from recast_mcore.actor.packing import pack_rows

    packed = pack_rows(PROMPTS, RESP, seq_len=7, pad_id=0)
    assert packed.tokens[1].tolist() == [1, 6, 7, 8, 21, 2, 0]
    assert packed.response_positions.tolist() == [[1, 2], [3, 4], [0, 1], [2, 3]]
    assert packed.real_tokens == 18 and packed.tokens.numel() == 28


def test_dense_packing_first_fit_decreasing_and_block_mask():
    from recast_mcore.actor.packing import attention_mask, pack_dense

    packed = pack_dense(PROMPTS, RESP, row_len=7, pad_id=0)
    assert packed.tokens.shape == (3, 7)  # 6 | 5 | 4+3 : FFD needs 3 rows of 7 (not 4 padded rows)
    for i, (p, r) in enumerate(zip(PROMPTS, RESP.tolist())):
        row = packed.tokens[packed.response_rows[i]].tolist()
        start = int(packed.response_positions[i, 0]) + 1 - len(p)
        assert row[start : start + len(p) + 2] == p + r  # sequence i is contiguous in its row
        assert packed.position_ids[packed.response_rows[i], start : start + len(p) + 2].tolist() == list(range(len(p) + 2))
    mask = attention_mask(packed, "cpu")  # True = masked
    r = int(packed.response_rows[2])  # the row holding sequences 0 (len 4) and 2 (len 3)
    seg = packed.segments[r]
    a, b = int((seg == 0).nonzero()[0]), int((seg == 2).nonzero()[0])
    assert bool(mask[r, 0, b, a]) and bool(mask[r, 0, a, b])  # no attention across sequences
    assert not bool(mask[r, 0, a + 3, a]) and bool(mask[r, 0, a, a + 1])  # causal inside a sequence
    assert not mask.all(-1).any()  # no query row fully masked (pads form their own block)


def test_thd_layout_cu_seqlens_multiple_and_equal_shapes():
    from recast_mcore.actor.packing import Layout, pack_micro_batches, pack_thd, packed_seq_params, thd_multiple

    packed = pack_thd(PROMPTS, RESP, multiple=16, pad_id=0)
    assert packed.tokens.shape == (1, 32)  # 18 real tokens -> 32 = 2 x 16, one trailing pad segment
    assert packed.cu_seqlens.tolist() == [0, 4, 10, 13, 18, 32] and packed.max_seqlen == 14
    assert packed.position_ids[0, :10].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert packed.response_positions.tolist() == [[1, 2], [7, 8], [10, 11], [15, 16]]
    params = packed_seq_params(packed, "cpu")
    assert params.qkv_format == "thd" and params.cu_seqlens_q.dtype == torch.int32 and params.max_seqlen_kv == 14
    assert thd_multiple(4, True, "e4m3", "tensorwise") == 64 and thd_multiple(4, False, "none", "delayed") == 1
    assert thd_multiple(2, True, "hybrid", "mxfp8") == 64
    layout = Layout("thd", 0, 8, use_cu_seqlens=True)
    mbs = pack_micro_batches([(PROMPTS[:1], RESP[:1]), (PROMPTS, RESP)], layout, 7, equal_shapes=True)
    assert [tuple(m.tokens.shape) for m in mbs] == [(1, 24), (1, 24)]  # pipeline p2p shapes agree
    rows = pack_micro_batches([(PROMPTS[:1], RESP[:1]), (PROMPTS, RESP)], Layout("rows", 0), 7, equal_shapes=True)
    assert [tuple(m.tokens.shape) for m in rows] == [(3, 7), (3, 7)]


def test_layout_resolution_rejects_impossible_combinations():
    from recast_mcore.actor.packing import resolve_layout

    assert resolve_layout("auto", True, 0, 16).mode == "thd" and resolve_layout("auto", False, 0, 1).mode == "off"
    assert resolve_layout("thd", True, 0, 16).use_cu_seqlens
    assert not resolve_layout("thd", False, 0, 1).use_cu_seqlens  # CPU: dense block mask emulation
    with pytest.raises(ValueError, match="sequence_packing=rows needs the Megatron-local spec"):
        resolve_layout("rows", True, 0, 1)


def test_padding_fraction_counts_only_padding():
    from recast_mcore.actor.packing import pack_dense, pack_rows, pack_thd, padding_fraction

    assert math.isclose(padding_fraction([pack_rows(PROMPTS, RESP, 6, 0)]), 1 - 18 / 24)
    assert math.isclose(padding_fraction([pack_dense(PROMPTS, RESP, 6, 0)]), 1 - 18 / 24)  # 6 | 5 | 4 | 3: no pair fits 6
    assert padding_fraction([pack_thd(PROMPTS, RESP, 1, 0)]) == 0.0


def test_flops_use_real_lengths_and_mixed_precision_peaks():
    from recast_mcore.actor.instrument import flops_by_kind, gemm_dtypes, ideal_seconds, train_flops_per_sequence

    cfg = ModelConfig(num_layers=1, hidden_size=4, ffn_hidden_size=8, num_attention_heads=2, num_query_groups=1)
    # per token: linear 4*(2+2)*2 + 2*2*4 + 3*4*8 = 32+16+96 = 144; logits 4*10 = 40; attention 2*n*2*2 per token
    f = flops_by_kind(cfg, [3, 5], 10)
    assert f["linear"] == 3 * 2 * 8 * 144 and f["logits"] == 3 * 2 * 8 * 40
    assert f["attention"] == 3 * 2 * 1 * 2 * 2 * 2 * (9 + 25)
    assert math.isclose(sum(f.values()), train_flops_per_sequence(cfg, 3, 10) + train_flops_per_sequence(cfg, 5, 10))
    fp8 = ModelConfig(params_dtype="bf16", fp8="hybrid")
    assert gemm_dtypes(fp8, False) == {"linear": "fp8", "attention": "bf16", "logits": "bf16"}
    assert gemm_dtypes(ModelConfig(), True)["linear"] == "tf32" and gemm_dtypes(ModelConfig(), False)["linear"] == "fp32"
    flops = {"linear": 4e12, "attention": 1e12, "logits": 1e12}
    peaks = {"fp8": 2000.0, "bf16": 1000.0}
    # 2 GPUs: 4e12/(2*2000e12) + 2e12/(2*1000e12) = 1e-3 + 1e-3
    assert math.isclose(ideal_seconds(flops, gemm_dtypes(fp8, False), peaks, 2), 2e-3)
    assert ideal_seconds(flops, gemm_dtypes(fp8, False), {"bf16": 1000.0}, 1) is None  # never a guessed peak
    assert ideal_seconds(flops, gemm_dtypes(fp8, False), None, 1) is None


@pytest.mark.parametrize("name,model", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA H100 NVL", "H100-NVL"),
    ("NVIDIA H200", "H200-SXM"), ("NVIDIA H200 NVL", "H200-NVL"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA B200", "B200"), ("NVIDIA GB200", None), ("NVIDIA L40S", None),
])
def test_device_model_table(name, model):
    from recast_mcore.actor.instrument import PEAK_SOURCES, PEAK_TFLOPS, device_model

    assert device_model(name) == model
    if model:
        assert model in PEAK_SOURCES and PEAK_TFLOPS[model]["bf16"] > 0
    assert PEAK_TFLOPS["H100-PCIe"]["bf16"] < PEAK_TFLOPS["H100-SXM"]["bf16"] < PEAK_TFLOPS["H100-SXM"]["fp8"]


def test_update_metrics_single_process_reports_real_tokens():
    from recast_mcore.actor.instrument import UpdateTimer, max_over_ranks, update_metrics

    timer = UpdateTimer(seconds=2.0, peak_memory_bytes=100)
    out = update_metrics(timer, ModelConfig(), seq_lens=torch.tensor([3, 5]), vocab_size=10, world_size=1)
    assert out["update_tokens"] == 8 and out["tokens_per_second"] == 4 and out["peak_memory_bytes"] == 100
    assert out["tf32"] == float(torch.backends.cuda.matmul.allow_tf32)
    assert "mfu" not in out or torch.cuda.is_available()
    assert max_over_ranks([1.0, 2.0]) == [1.0, 2.0]


def test_step_guard_skip_count_and_stop():
    from recast_mcore.actor.nonfinite import NonFiniteStepError, StepGuard

    guard = StepGuard(OptimConfig(max_consecutive_skips=3))
    assert not guard.should_skip(0, 1.0, 2.0)
    assert guard.should_skip(1, float("nan"), 2.0) and guard.should_skip(2, 1.0, float("inf"))
    assert not guard.should_skip(3, 1.0, 1.0)  # a good step resets the run of skips
    assert guard.metrics(True) == {"nonfinite_skipped": 1.0, "skipped_steps_total": 2.0}
    guard.should_skip(4, float("nan"), 1.0), guard.should_skip(5, float("nan"), 1.0)
    with pytest.raises(NonFiniteStepError, match="3 steps in a row"):
        guard.should_skip(6, float("nan"), 1.0)
    with pytest.raises(NonFiniteStepError, match="optimizer step 8: loss=1.0, global grad norm=nan .*nonfinite_policy=stop"):
        StepGuard(OptimConfig(nonfinite_policy="stop")).should_skip(7, 1.0, float("nan"))


def test_performance_switch_validation():
    with pytest.raises(ConfigError, match="overlap_param_gather needs distributed_optimizer=true"):
        from_dict(OptimConfig, {"overlap_param_gather": True, "overlap_grad_reduce": True})
    from_dict(OptimConfig, {"overlap_param_gather": True, "overlap_grad_reduce": True, "distributed_optimizer": True})
    with pytest.raises(ConfigError, match="sequence_parallel needs tensor_parallel >= 2"):
        from_dict(ParallelConfig, {"sequence_parallel": True})
    with pytest.raises(ConfigError, match="recompute_modules"):
        from_dict(ModelConfig, {"recompute_granularity": "selective", "recompute_modules": ["attention"]})
    with pytest.raises(ConfigError, match="recompute_num_layers=5 must be in"):
        from_dict(ModelConfig, {"recompute_granularity": "full", "recompute_num_layers": 5})
    with pytest.raises(ConfigError, match="fp8_recipe=delayed"):
        from_dict(ModelConfig, {"recompute_granularity": "selective", "recompute_modules": ["layernorm"],
                                "params_dtype": "bf16", "fp8": "hybrid", "fp8_recipe": "delayed"})


def test_te_only_switches_fail_clearly_on_the_local_spec():
    from recast_mcore.actor.model import recompute_kwargs, transformer_config

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    local = ModelConfig(num_layers=2, recompute_granularity="selective", recompute_modules=["mlp"])
    with pytest.raises(ValueError, match="layernorm/mlp recompute needs Transformer Engine"):
        transformer_config(local, ParallelConfig())
    with pytest.raises(ValueError, match="sequence_parallel needs the Transformer Engine spec"):
        transformer_config(ModelConfig(), ParallelConfig(tensor_parallel=2, sequence_parallel=True))
    assert recompute_kwargs(ModelConfig(recompute_granularity="full", recompute_method="block", recompute_num_layers=2)) == {
        "recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2}
    assert recompute_kwargs(ModelConfig()) == {}


def test_gpu_examples_turn_on_the_performance_switches():
    from pathlib import Path

    from recast_mcore.config.base import load_config
    from recast_mcore.config.run import RunConfig

    root = Path(__file__).resolve().parents[1]
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"):
        cfg = load_config(RunConfig, root / "examples" / f"{name}.yaml")
        o, par = cfg.optim, cfg.parallel
        assert o.distributed_optimizer and o.overlap_grad_reduce and o.overlap_param_gather, name
        assert par.sequence_parallel == (par.tensor_parallel >= 2), name
        assert par.sequence_packing == "thd" and cfg.model.transformer_impl == "transformer_engine", name
    for script in ("torchrun_multinode.sh", "slurm.sbatch"):
        text = (root / "examples/launch" / script).read_text()
        assert "CUDA_DEVICE_MAX_CONNECTIONS=" in text and ".venv/bin" not in text and "Shared filesystem" in text, script
