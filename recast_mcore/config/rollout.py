"""Rollout configuration: which engine, how candidates are sampled, SGLang servers and weight sync."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlparse

from recast_mcore.utils.net import is_loopback


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
    """Interface launched servers bind to (loopback by default). Anything else needs ``allow_non_loopback``
    and ``api_key_env``; ``node-ip`` binds each server to the address of the node that hosts it (multi-node)."""
    allow_non_loopback: bool = False
    """Allow a non-loopback ``host`` (launch) or non-loopback ``urls`` (attach); also needs ``api_key_env``."""
    api_key_env: str = ""
    """Environment variable holding the servers' API key. '' = launched servers get a fresh random key per run
    (kept in memory, never logged); attached servers are then used without a key (loopback only)."""
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
    """Send generation requests (sampling and every beam-search level) through sglang-router (launched here, in
    front of the servers, cache-aware) instead of spreading chunks round-robin; weight updates and health checks
    still go to every server directly. Attached servers need ``recast_mcore/rollout/server_path`` on their
    PYTHONPATH (the ``custom_params`` shim; checked at construction, docs/rollout.md "Servers")."""
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
        remote = [h for h in self.hosts() if not is_loopback(h)]
        if remote and not (self.allow_non_loopback and self.api_key_env):
            raise ValueError(
                f"sglang: non-loopback server address {remote[0]!r} needs both allow_non_loopback: true and "
                "api_key_env (a key from the environment): anyone who reaches the port could otherwise send requests, "
                "including code for the custom logit processor"
            )

    def hosts(self) -> list[str]:
        """Host names the servers are reached at (``host`` when launching, the urls' hosts when attaching)."""
        if self.mode == "launch":
            return [self.host]
        return [urlparse(u).hostname or "" for u in self.urls]


@dataclass(kw_only=True)
class WeightSyncConfig:
    """How the actor's new weights reach the rollout servers after each update (streamed in buckets)."""

    method: Literal["distributed", "tensor", "disk"] = "disk"
    """distributed: SGLang weight-update group, one broadcast per bucket (NCCL on GPU, gloo on CPU);
    tensor: ``/update_weights_from_tensor`` per bucket (same host: shared-memory / CUDA IPC handles);
    disk: sharded safetensors in the serving dtype, then ``/update_weights_from_disk`` (shared filesystem)."""
    bucket_mb: float = 512.0
    """Bucket size in MiB: tensors are gathered, converted and pushed this many bytes at a time (a larger
    single tensor forms its own bucket). Peak extra memory on a sending rank is about two buckets."""
    sync_dir: str = ""
    """Directory for disk sync snapshots ('' = inside the engine's work directory)."""
    keep_snapshots: int = 1
    """Disk sync: snapshot directories kept (>= 1; the newest is what a restarted server loads)."""
    master_addr: str = ""
    """distributed: address the servers reach a sending rank at ('' = loopback when every server is on
    loopback, else the sending node's host address)."""

    def validate(self) -> None:
        if self.keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be >= 1, got {self.keep_snapshots}")
        if not self.bucket_mb > 0:
            raise ValueError(f"weight_sync.bucket_mb must be > 0, got {self.bucket_mb}")

    @property
    def bucket_bytes(self) -> int:
        return int(self.bucket_mb * 2**20)


@dataclass(kw_only=True)
class PlacementConfig:
    """Where launched SGLang servers run on GPU nodes (ignored on CPU). See rollout/placement.py."""

    mode: Literal["colocated", "disaggregated"] = "colocated"
    """colocated: servers share the trainer's GPUs (their memory is released while the actor works);
    disaggregated: servers use the GPUs of each node that the trainer's processes leave free."""
    gpus_per_server: int = 1
    """Tensor-parallel size of one server (SGLang --tp-size)."""
    dp_per_server: int = 1
    """Data-parallel replicas inside one server (SGLang --dp-size); > 1 only with disk weight sync (SGLang's
    tensor/distributed weight updates assert dp_size == 1)."""
    gpus_per_node: int = 0
    """GPUs of a node (0 = what torch.cuda.device_count() reports there)."""
    release_memory: bool = True
    """colocated: release the servers' weights and KV cache while the actor updates, resume them for the sync
    and the next rollout (SGLang memory-occupation calls; needs --enable-memory-saver, added on GPU)."""
    offload_optimizer: bool = False
    """colocated: move the actor's optimizer state to CPU memory while the servers roll out."""

    def validate(self) -> None:
        if self.gpus_per_server < 1 or self.dp_per_server < 1:
            raise ValueError(f"placement: gpus_per_server and dp_per_server must be >= 1, got "
                             f"{self.gpus_per_server}, {self.dp_per_server}")
        if self.gpus_per_node < 0:
            raise ValueError(f"placement.gpus_per_node must be >= 0, got {self.gpus_per_node}")


@dataclass(kw_only=True)
class RolloutConfig:
    """The rollout engine: SGLang (production) or the in-process torch engine (quick tests)."""

    engine: Literal["sglang", "torch", "torch_kv"] = "sglang"
    """Registered engine name: `sglang` (servers), `torch` (in process, the actor's own Megatron model, no KV
    cache), `torch_kv` (in process, the weights in a transformers model with a KV cache; rollout/kv_engine.py)."""
    mode: Literal["sample", "beam"] = "sample"
    """How RL candidate groups are made: sample G items per prompt, or take the top G beams of a constrained
    beam search of width ``beam_width`` (their sequence log-probs are the old log-probs; see rollout/modes.py)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Group sampling settings (``group_size`` is G in both modes)."""
    seed: int = 0
    """Seed of the in-process engines' sampler (SGLang servers use ``sglang.random_seed``)."""
    beam_width: int = 32
    """``mode: beam``: beams kept per prompt (OpenOneRec-RL rolls out 32); the top ``sampling.group_size`` form
    the group and every beam counts in the rollout budget. Must be >= group_size. Evaluation uses ``eval.beam_width``."""
    work_dir: str = ""
    """Scratch directory for trie tables and weight snapshots ('' = a temporary directory)."""
    torch_batch_size: int = 256
    """In-process engines: sequences per forward call."""
    sglang: SGLangServerConfig = field(default_factory=SGLangServerConfig)
    """SGLang servers."""
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    """Weight sync transport."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """GPU placement of launched servers (colocated or disaggregated)."""

    def validate(self) -> None:
        if self.placement.dp_per_server > 1 and self.weight_sync.method != "disk":
            raise ValueError("placement.dp_per_server > 1 needs weight_sync.method: disk (SGLang's tensor and "
                             "distributed weight updates support one data-parallel replica per server)")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.mode == "beam" and self.beam_width < self.sampling.group_size:
            raise ValueError(f"mode 'beam' keeps the top sampling.group_size={self.sampling.group_size} beams: "
                             f"beam_width ({self.beam_width}) must be >= it")
        if self.torch_batch_size < 1:
            raise ValueError(f"torch_batch_size must be >= 1, got {self.torch_batch_size}")
