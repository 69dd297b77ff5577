"""Per-update instrumentation: wall time, sequences/tokens, peak memory, tokens/s, FLOPs and MFU.

Peak memory:
- GPU: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` at the start of the
  update (bytes held by tensors at the peak, the allocator's own view).
- CPU: peak resident-set-size DELTA of this process, measured by a background thread sampling
  ``psutil.Process().memory_info().rss`` every ``interval_s`` (default 1 ms) during the update:
  ``peak_rss - rss_at_start``, after glibc ``malloc_trim(0)`` returned freed heap pages to the OS at
  the start (otherwise pages freed by an earlier, bigger update stay resident and hide this one's
  usage). It counts what the update newly touched (activations, grads, optimizer temporaries).
  Sampling can miss a spike shorter than the interval, and memory the allocator keeps mapped (e.g.
  persistent gradient buffers) is not in the delta. It is a measured quantity, not an estimate.

Model FLOPs (Megatron-LM / PaLM convention, causal masking not discounted), per sequence of length S
with d = hidden, L = layers, h = head_dim, nq/ng = query/KV heads, f = ffn hidden, V = vocab:
    matmul_params = L * (d*(nq + 2*ng)*h + nq*h*d + 3*d*f) + d*V
    forward_flops = 2*S*matmul_params + L * 4 * S^2 * nq*h        (QK^T and attention x V)
    train_flops   = 3 * forward_flops                            (backward = 2x forward)
MFU = train_flops of all sequences / (update seconds * world size * peak FLOP/s of one GPU); the peak
comes from ``PEAK_TFLOPS`` by device name and dtype; MFU is None on CPU or an unknown GPU.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from recast_mcore.config.actor import ModelConfig

PEAK_TFLOPS = {  # dense tensor-core peak per GPU
    ("H100", "bf16"): 989.0,
    ("H200", "bf16"): 989.0,
    ("A100", "bf16"): 312.0,
    ("H100", "fp32"): 494.0,  # TF32 tensor cores
    ("H200", "fp32"): 494.0,
    ("A100", "fp32"): 156.0,
}


def train_flops_per_sequence(model_cfg: ModelConfig, seq_len: int, vocab_size: int) -> float:
    """3 * forward FLOPs of one sequence of ``seq_len`` tokens (formula in the module doc)."""
    d, L, h, f = model_cfg.hidden_size, model_cfg.num_layers, model_cfg.head_dim, model_cfg.ffn_hidden_size
    nq, ng = model_cfg.num_attention_heads, model_cfg.num_query_groups
    params = L * (d * (nq + 2 * ng) * h + nq * h * d + 3 * d * f) + d * vocab_size
    forward = 2.0 * seq_len * params + L * 4.0 * seq_len**2 * nq * h
    return 3.0 * forward


def peak_flops_per_device(dtype: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for (key, dt), tflops in PEAK_TFLOPS.items():
        if key in name and dt == dtype:
            return tflops * 1e12
    return None


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
    """Context manager measuring one actor update (wall time and peak memory)."""

    interval_s: float = 0.001
    seconds: float = 0.0
    peak_memory_bytes: int = 0
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
        self.seconds = time.perf_counter() - self._t0
        if self._sampler is not None:
            self.peak_memory_bytes = int(self._sampler.stop())


def update_metrics(
    timer: UpdateTimer, model_cfg: ModelConfig, *, sequences: int, tokens: int, seq_len: int, vocab_size: int, world_size: int
) -> dict[str, float]:
    """The per-update instrumentation dict (``mfu`` only on a known GPU)."""
    out = {
        "update_seconds": timer.seconds,
        "update_sequences": float(sequences),
        "update_tokens": float(tokens),
        "tokens_per_second": tokens / timer.seconds if timer.seconds > 0 else 0.0,
        "peak_memory_bytes": float(timer.peak_memory_bytes),
    }
    flops = train_flops_per_sequence(model_cfg, seq_len, vocab_size) * sequences
    out["model_tflops"] = flops / 1e12
    peak = peak_flops_per_device(model_cfg.params_dtype)
    if peak is not None and timer.seconds > 0:
        out["mfu"] = flops / (timer.seconds * world_size * peak)
    return out
