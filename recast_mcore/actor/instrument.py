"""Per-update instrumentation: wall time, sequences/tokens, peak memory, tokens/s, FLOPs and MFU.

Peak memory (reported as the MAX over all ranks, plus this rank's own value):
- GPU: ``torch.cuda.max_memory_allocated()`` (bytes held by tensors at the peak) and
  ``torch.cuda.max_memory_reserved()`` (bytes the caching allocator held from the driver, what an OOM
  sees) after ``reset_peak_memory_stats()`` at the start of the update.
- CPU: peak resident-set-size DELTA of this process, measured by a background thread sampling
  ``psutil.Process().memory_info().rss`` every ``interval_s`` (default 1 ms) during the update:
  ``peak_rss - rss_at_start``, after glibc ``malloc_trim(0)`` returned freed heap pages to the OS at
  the start (otherwise pages freed by an earlier, bigger update stay resident and hide this one's
  usage). It counts what the update newly touched (activations, grads, optimizer temporaries).
  Sampling can miss a spike shorter than the interval, and memory the allocator keeps mapped (e.g.
  persistent gradient buffers) is not in the delta. It is a measured quantity, not an estimate.

Model FLOPs (Megatron-LM / PaLM convention: causal masking not discounted, activation recompute not
counted), per sequence at its REAL length n (prompt + response; padding slots are not model FLOPs), with
d = hidden, L = layers, h = head_dim, nq/ng = query/KV heads, f = ffn hidden, V = vocab:
    linear(n)    = 2*n * L * (d*(nq + 2*ng)*h + nq*h*d + 3*d*f)      (QKV, out-proj, SwiGLU fc1+fc2)
    attention(n) = 2*n * L * 2*n*nq*h                                  (QK^T and attention x V)
    logits(n)    = 2*n * d*V
    train        = 3 * forward                                          (backward = 2x forward)
MFU = ideal seconds / measured seconds, ideal = sum over GEMM kinds of (train FLOPs of that kind) /
(world size * peak FLOP/s of that kind's dtype on this GPU). With ``fp8`` the transformer layers' linear
GEMMs run in FP8 (Transformer Engine) and attention (fused, bf16) and the output layer (Megatron's own
ColumnParallelLinear) in bf16, so FP8 runs are measured against the FP8 peak for the FP8 share only;
fp32 runs use the TF32 tensor-core peak when TF32 matmuls are enabled, else the plain FP32 peak. Measured
seconds = the slowest rank's update time; peak memory = the max over ranks (one all-reduce of 3 numbers).

``PEAK_TFLOPS``: dense (no 2:4 sparsity) tensor-core peak per GPU, TFLOP/s, from NVIDIA's datasheets
(``PEAK_SOURCES``); a device name is matched by ``device_model()`` (SXM vs PCIe vs NVL are different rows).
MFU is None on CPU or an unknown GPU (never a guessed peak).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch
import torch.distributed as dist

from recast_mcore.config.actor import ModelConfig

# device model -> {dtype: dense TFLOP/s}. "fp32" = FP32 on CUDA cores (no tensor cores), "tf32" = TF32 tensor cores.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100-SXM": {"fp8": 1978.9, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100-PCIe": {"fp8": 1513.0, "bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100-NVL": {"fp8": 1670.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200-SXM": {"fp8": 1978.9, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200-NVL": {"fp8": 1670.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "B200": {"fp8": 4500.0, "bf16": 2250.0, "tf32": 1100.0, "fp32": 75.0},
}
PEAK_SOURCES = {
    "H100-SXM": "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column (sparse figures / 2)",
    "H100-PCIe": "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe column (sparse figures / 2)",
    "H100-NVL": "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL column (sparse figures / 2)",
    "H200-SXM": "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column (sparse figures / 2)",
    "H200-NVL": "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL column (sparse figures / 2)",
    "A100": "NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe have the same peaks; no FP8)",
    "B200": "NVIDIA HGX B200 datasheet, individual GPU column (sparse figures / 2)",
}


def device_model(name: str) -> str | None:
    """``torch.cuda.get_device_name()`` -> a PEAK_TFLOPS key, or None when unknown.

    Examples: 'NVIDIA H100 80GB HBM3' -> H100-SXM, 'NVIDIA H100 PCIe' -> H100-PCIe, 'NVIDIA H100 NVL' ->
    H100-NVL, 'NVIDIA H200' -> H200-SXM, 'NVIDIA H200 NVL' -> H200-NVL, 'NVIDIA A100-SXM4-80GB' -> A100,
    'NVIDIA B200' -> B200.
    """
    n = name.upper()
    for chip in ("H100", "H200"):
        if chip in n:
            if "NVL" in n:
                return f"{chip}-NVL"
            return f"{chip}-PCIe" if "PCIE" in n else f"{chip}-SXM"
    if "A100" in n:
        return "A100"
    if "B200" in n and "GB200" not in n:
        return "B200"
    return None


def flops_by_kind(model_cfg: ModelConfig, seq_lens: torch.Tensor | list[int], vocab_size: int) -> dict[str, float]:
    """Train FLOPs (3x forward) of sequences of the given real lengths, split into linear/attention/logits."""
    n = torch.as_tensor(seq_lens, dtype=torch.float64)
    d, L, h, f = model_cfg.hidden_size, model_cfg.num_layers, model_cfg.head_dim, model_cfg.ffn_hidden_size
    nq, ng = model_cfg.num_attention_heads, model_cfg.num_query_groups
    per_token_linear = L * (d * (nq + 2 * ng) * h + nq * h * d + 3 * d * f)
    return {
        "linear": 3.0 * 2.0 * float(n.sum()) * per_token_linear,
        "attention": 3.0 * 2.0 * L * 2.0 * nq * h * float((n * n).sum()),
        "logits": 3.0 * 2.0 * float(n.sum()) * d * vocab_size,
    }


def train_flops_per_sequence(model_cfg: ModelConfig, seq_len: int, vocab_size: int) -> float:
    """3 * forward FLOPs of one sequence of ``seq_len`` real tokens (formula in the module doc)."""
    return sum(flops_by_kind(model_cfg, [seq_len], vocab_size).values())


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def gemm_dtypes(model_cfg: ModelConfig, tf32: bool) -> dict[str, str]:
    """Which peak applies to each FLOP kind (module doc)."""
    if model_cfg.params_dtype == "bf16":
        return {"linear": "fp8" if model_cfg.fp8 != "none" else "bf16", "attention": "bf16", "logits": "bf16"}
    fp32 = "tf32" if tf32 else "fp32"
    return {"linear": fp32, "attention": fp32, "logits": fp32}


def ideal_seconds(flops: dict[str, float], dtypes: dict[str, str], peaks: dict[str, float] | None, world_size: int) -> float | None:
    """sum_k flops_k / (world_size * peak[dtype_k]); None if a needed peak is unknown."""
    if peaks is None or any(dtypes[k] not in peaks for k in flops):
        return None
    return sum(flops[k] / (world_size * peaks[dtypes[k]] * 1e12) for k in flops)


def _release_free_heap() -> None:
    """glibc ``malloc_trim(0)``: return freed heap pages to the OS so the RSS baseline is honest.

    Without it, memory freed by an earlier (bigger) update stays resident and a later update that
    reuses it shows a near-zero RSS delta. No-op where glibc is absent.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class _RssSampler:
    """Background thread recording the max RSS of this process (CPU peak-memory measurement)."""

    def __init__(self, interval_s: float) -> None:
        _release_free_heap()
        self.interval_s = interval_s
        self.proc = psutil.Process()
        self.start_rss = self.proc.memory_info().rss
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak - self.start_rss


@dataclass
class UpdateTimer:
    """Context manager measuring one actor update (wall time and peak memory of this rank)."""

    interval_s: float = 0.001
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    peak_reserved_bytes: int = 0
    memory_kind: str = field(default="")
    _t0: float = 0.0
    _sampler: _RssSampler | None = None

    def __enter__(self) -> "UpdateTimer":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.memory_kind = "cuda_max_memory_allocated"
        else:
            self._sampler = _RssSampler(self.interval_s)
            self.memory_kind = "cpu_peak_rss_delta"
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
            self.peak_reserved_bytes = int(torch.cuda.max_memory_reserved())
        self.seconds = time.perf_counter() - self._t0
        if self._sampler is not None:
            self.peak_memory_bytes = int(self._sampler.stop())


def max_over_ranks(values: list[float]) -> list[float]:
    """Element-wise max over all ranks of the default process group (identity without one)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    vec = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.MAX)
    return vec.cpu().tolist()


def update_metrics(
    timer: UpdateTimer, model_cfg: ModelConfig, *, seq_lens: torch.Tensor, vocab_size: int, world_size: int
) -> dict[str, float]:
    """The per-update instrumentation dict for sequences of real lengths ``seq_lens`` (collective: one
    all-reduce MAX of time and memory over ranks). ``mfu`` only on a GPU with a known peak."""
    seconds, peak, reserved = max_over_ranks([timer.seconds, timer.peak_memory_bytes, timer.peak_reserved_bytes])
    tokens = float(torch.as_tensor(seq_lens).sum())
    flops = flops_by_kind(model_cfg, seq_lens, vocab_size)
    tf32 = tf32_enabled()
    out = {
        "update_seconds": seconds,
        "update_seconds_this_rank": timer.seconds,
        "update_sequences": float(len(seq_lens)),
        "update_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "peak_memory_bytes": peak,
        "peak_memory_bytes_this_rank": float(timer.peak_memory_bytes),
        "model_tflops": sum(flops.values()) / 1e12,
        "tf32": float(tf32),
    }
    if torch.cuda.is_available():
        out["peak_reserved_bytes"] = reserved
        model = device_model(torch.cuda.get_device_name())
        ideal = ideal_seconds(flops, gemm_dtypes(model_cfg, tf32), PEAK_TFLOPS.get(model or ""), world_size)
        if ideal is not None and seconds > 0:
            out["mfu"] = ideal / seconds
    return out
