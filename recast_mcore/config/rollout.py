"""Rollout configuration: which engine, how candidates are sampled, SGLang servers and weight sync."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class SamplingConfig:
    """How the G candidates of a prompt are drawn (always constrained to catalog items by the trie)."""

    group_size: int = 8
    """G: candidates sampled per prompt."""
    temperature: float = 1.0
    """Sampling temperature (> 0). Returned log-probs are always of the temperature-1 constrained policy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    top_k: int = -1
    """Keep the k most likely allowed tokens; -1 disables it."""

    def validate(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")


@dataclass(kw_only=True)
class SGLangServerConfig:
    """Where the SGLang servers come from and how they are run, watched and restarted."""

    mode: Literal["launch", "attach"] = "launch"
    """launch: start local servers (stopped on exit); attach: use servers the user started (``urls``)."""
    urls: list[str] = field(default_factory=list)
    """Base URLs (``http://host:port``) of running servers for ``mode: attach``."""
    num_servers: int = 1
    """Servers to launch for data-parallel rollout (``mode: launch``); prompts are spread over them."""
    host: str = "127.0.0.1"
    """Interface launched servers bind to (loopback by default)."""
    base_port: int = 0
    """First port for launched servers (server i uses base_port + i); 0 picks free ports."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight/activation dtype of the server (float32 on CPU for exact log-prob agreement)."""
    max_total_tokens: int = 16384
    """KV-cache capacity in tokens (without it SGLang on CPU claims most free RAM)."""
    mem_fraction_static: float = 0.0
    """SGLang --mem-fraction-static (0 leaves SGLang's default)."""
    random_seed: int = 0
    """SGLang --random-seed."""
    omp_threads: int = 0
    """OMP_NUM_THREADS for a launched server's processes (0 inherits the environment)."""
    extra_args: list[str] = field(default_factory=list)
    """Further command-line flags appended to ``sglang.launch_server``."""
    startup_timeout_s: float = 300.0
    """Seconds a launched server may take to answer /health with 200; then it is reported with its log tail."""
    request_timeout_s: float = 120.0
    """Seconds one HTTP request may take before the server is treated as hung."""
    max_retries: int = 2
    """Times a failed request chunk is retried (after restarting a dead launched server) before giving up."""
    prompts_per_request: int = 16
    """Prompts batched into one /generate call (a chunk; the unit of retry)."""
    log_dir: str = ""
    """Where server logs go ('' = a temporary directory, removed on close unless a server failed)."""
    skip_tokenizer_init: bool = True
    """Launch without the model's tokenizer (the trainer sends and reads token ids); false loads it, so the same
    server also answers text requests (e.g. an imported LLM with its expanded tokenizer)."""
    use_router: bool = False
    """Send generation requests through sglang-router (launched here, in front of the servers) instead of
    spreading chunks round-robin; weight updates and health checks still go to every server directly."""
    router_policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = "cache_aware"
    """sglang-router load-balancing policy (``use_router``)."""
    router_cache_threshold: float = 0.01
    """sglang-router ``--cache-threshold``: the prefix-match ratio above which a request follows its cache
    (low, so every beam-search level of a prompt chunk stays on one server; see rollout/router.py)."""

    def validate(self) -> None:
        if self.mode == "attach" and not self.urls:
            raise ValueError("mode 'attach' needs at least one url in 'urls'")
        if self.mode == "launch" and self.num_servers < 1:
            raise ValueError(f"num_servers must be >= 1, got {self.num_servers}")
        if self.max_total_tokens < 64:
            raise ValueError(f"max_total_tokens must be >= 64, got {self.max_total_tokens}")
        if self.max_retries < 0 or self.prompts_per_request < 1:
            raise ValueError("max_retries must be >= 0 and prompts_per_request >= 1")
        if self.request_timeout_s <= 0 or self.startup_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if not 0.0 <= self.router_cache_threshold <= 1.0:
            raise ValueError(f"router_cache_threshold must be in [0, 1], got {self.router_cache_threshold}")


@dataclass(kw_only=True)
class WeightSyncConfig:
    """How the actor's new weights reach the rollout servers after each update."""

    method: Literal["tensor", "disk"] = "disk"
    """tensor: ``/update_weights_from_tensor`` (colocated, same host); disk: write safetensors, ``/update_weights_from_disk``."""
    sync_dir: str = ""
    """Directory for disk sync snapshots ('' = inside the engine's work directory)."""
    keep_snapshots: int = 1
    """Disk sync: snapshot directories kept (>= 1; the newest is what a restarted server loads)."""

    def validate(self) -> None:
        if self.keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be >= 1, got {self.keep_snapshots}")


@dataclass(kw_only=True)
class RolloutConfig:
    """The rollout engine: SGLang (production) or the in-process torch engine (quick tests)."""

    engine: Literal["sglang", "torch"] = "sglang"
    """Registered engine name."""
    mode: Literal["sample", "beam"] = "sample"
    """How RL candidate groups are made: sample G items per prompt, or take the top G beams of a constrained
    beam search of width ``beam_width`` (their sequence log-probs are the old log-probs; see rollout/modes.py)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Group sampling settings (``group_size`` is G in both modes)."""
    seed: int = 0
    """Seed of the in-process engine's sampler (SGLang servers use ``sglang.random_seed``)."""
    beam_width: int = 32
    """``mode: beam``: beams kept per prompt (OpenOneRec-RL rolls out 32); the top ``sampling.group_size`` form
    the group and every beam counts in the rollout budget. Must be >= group_size. Evaluation uses ``eval.beam_width``."""
    work_dir: str = ""
    """Scratch directory for trie tables and weight snapshots ('' = a temporary directory)."""
    torch_batch_size: int = 256
    """In-process engine: sequences per forward call of ``logits_fn``."""
    sglang: SGLangServerConfig = field(default_factory=SGLangServerConfig)
    """SGLang servers."""
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    """Weight sync transport."""

    def validate(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.mode == "beam" and self.beam_width < self.sampling.group_size:
            raise ValueError(f"mode 'beam' keeps the top sampling.group_size={self.sampling.group_size} beams: "
                             f"beam_width ({self.beam_width}) must be >= it")
        if self.torch_batch_size < 1:
            raise ValueError(f"torch_batch_size must be >= 1, got {self.torch_batch_size}")
