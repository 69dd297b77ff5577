"""Local SGLang server processes: launch on a free loopback port, health-check, capture logs, stop, restart.

``LaunchedServer`` owns one SGLang server process group (``sglang.launch_server`` through
``rollout/sglang_launch.py``). On CPU the process gets the CPU bridges on its PYTHONPATH
(``cpu_bridge.server_env``). Every launched server also gets ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``, so
returned log-probs are of the temperature-1 distribution after the trie mask: exactly the constrained policy
the actor trains (see docs/rollout.md). A server started with an API key (the engine generates one per run)
answers only requests that carry it, and only such a server accepts custom logit processors.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from recast_mcore.config.rollout import SGLangServerConfig
from recast_mcore.rollout.cpu_bridge import needs_cpu_bridges, server_env
from recast_mcore.rollout.placement import ServerSlot, slot_flags
from recast_mcore.rollout.sglang_launch import KEY_ENV


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                 "TORCH_NCCL_ASYNC_ERROR_HANDLING")
"""Variables torchrun sets for the trainer's ranks; a launched SGLang server must not inherit them."""


class ServerStartError(RuntimeError):
    """A launched SGLang server exited or never became healthy; the message carries its log tail."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound with port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when missing)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    keep = [ln for ln in text if "server_args=" not in ln]  # one huge line, rarely the cause
    return "\n".join(keep[-lines:])


def node_address() -> str:
    """This node's address as other nodes reach it (its host name resolved)."""
    return socket.gethostbyname(socket.gethostname())


def bind_host(cfg: SGLangServerConfig) -> str:
    """The interface a launched server binds to: ``cfg.host``, or this node's address for ``node-ip``."""
    return node_address() if cfg.host == "node-ip" else cfg.host


def launch_command(cfg: SGLangServerConfig, model_path: str, port: int, weight_version: int = 0, *,
                   slot: ServerSlot | None = None, with_key: bool = False, memory_saver: bool = False) -> list[str]:
    """The server command line (it reports ``weight_version`` per sample).

    Runs ``sglang.launch_server`` through ``rollout/sglang_launch.py``, which takes the API key from the
    environment (never the command line). Custom logit processors (code shipped with a request and run by the
    server) are enabled only when the server requires the key (``with_key``). ``slot`` adds the GPU placement
    flags (rollout/placement.py).
    """
    cmd = [
        sys.executable, "-m", "recast_mcore.rollout.sglang_launch",
        "--model-path", str(model_path),
        "--host", bind_host(cfg),
        "--port", str(port),
        "--dtype", cfg.dtype,
        "--max-total-tokens", str(cfg.max_total_tokens),
        "--random-seed", str(cfg.random_seed),
        "--weight-version", str(weight_version),
    ]
    if cfg.skip_tokenizer_init:
        cmd.append("--skip-tokenizer-init")
    if with_key:
        cmd.append("--enable-custom-logit-processor")
    if needs_cpu_bridges():
        cmd += ["--device", "cpu"]  # the overlap scheduler stays on (delayed sampling, see LaunchedServer.start)
    if slot is not None:
        cmd += slot_flags(slot, memory_saver)
    if cfg.mem_fraction_static > 0:
        cmd += ["--mem-fraction-static", str(cfg.mem_fraction_static)]
    if any(a.split("=")[0] in ("--api-key", "--admin-api-key") for a in cfg.extra_args):
        raise ValueError("sglang.extra_args must not carry an API key (it would show in ps and logs); use api_key_env")
    return cmd + list(cfg.extra_args)


class LaunchedServer:
    """One local SGLang server process; ``start()`` blocks until /health answers 200."""

    def __init__(self, cfg: SGLangServerConfig, model_path: str, log_path: Path, port: int = 0, weight_version: int = 0,
                 *, api_key: str = "", slot: ServerSlot | None = None, memory_saver: bool = False):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.weight_version = weight_version
        self.log_path = Path(log_path)
        self.host = bind_host(cfg)
        self.port = port or find_free_port(self.host)
        self._api_key = api_key  # handed to the process through its environment only
        self.slot, self.memory_saver = slot, memory_saver
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            raise RuntimeError(f"server at {self.url} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = server_env()
        # launched from a torchrun rank: the server must not join the trainer's process group
        for key in _TORCHRUN_ENV:
            env.pop(key, None)
        env["SGLANG_RETURN_ORIGINAL_LOGPROB"] = "1"
        env["SGLANG_ENABLE_DELAY_SAMPLE"] = "1"  # overlap scheduler: sample after the previous step's outputs land
        env.pop(KEY_ENV, None)
        if self.cfg.api_key_env:  # the trainer's copy of the key: a child gets it through KEY_ENV only (or not at all)
            env.pop(self.cfg.api_key_env, None)
        if self._api_key:
            env[KEY_ENV] = self._api_key
        if self.cfg.omp_threads > 0:
            env["OMP_NUM_THREADS"] = str(self.cfg.omp_threads)
        cmd = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start #{self.starts + 1}: {' '.join(cmd)}\n".encode())
            self.proc = subprocess.Popen(
                cmd,
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        self.starts += 1
        self._wait_healthy()

    def command(self) -> list[str]:
        """The process's command line (a subclass launches something else, e.g. the router)."""
        return launch_command(self.cfg, self.model_path, self.port, self.weight_version, slot=self.slot,
                              with_key=bool(self._api_key), memory_saver=self.memory_saver)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self.proc.returncode if self.proc else None
                raise ServerStartError(
                    f"SGLang server for {self.model_path} exited with code {code} during startup; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerStartError(
            f"SGLang server at {self.url} not healthy after {self.cfg.startup_timeout_s:.0f} s; "
            f"log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        _signal_group(self.proc.pid, signal.SIGKILL)  # leftover children (scheduler, detokenizer)
        self.proc = None

    def restart(self, model_path: str, weight_version: int) -> None:
        """Stop (if needed) and start again on the same port from ``model_path`` serving ``weight_version``."""
        self.stop()
        self.model_path = str(model_path)
        self.weight_version = weight_version
        self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group (used to simulate a crash)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
