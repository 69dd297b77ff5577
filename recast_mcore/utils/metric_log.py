"""Metric records: one JSONL line per record (the source of truth), TensorBoard scalars and a tqdm bar.

A record is ``{"stage": "sft"|"rl"|"eval", "step": int, "rollout_budget": int, <metric>: float, ...}``.
TensorBoard gets ``<stage>/<metric>`` against the step and, for RL and eval records,
``<stage>_vs_budget/<metric>`` against the rollout budget.

On resume the JSONL is cut back to the checkpoint and the TensorBoard directory is rebuilt from the
JSONL, so a resumed run's logs equal an uninterrupted run's. Nothing is deleted silently: records cut
away are appended to ``<name>.removed.jsonl`` (one ``{"removed_at", "reason", "record"}`` line each) and,
when records were cut, the old event files move to ``tensorboard.removed/<time>/`` (without cut records
the rebuilt directory holds the same scalars). A new run in a directory with an old log does the same
with every record (``start_new``).
Only rank 0 writes; other ranks get a logger with ``enabled=False`` that does nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from recast_mcore.config.train import LoggingConfig
from recast_mcore.utils.paths import unique_path

STAGE_ORDER = {"sft": 0, "rl": 1}


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL metrics file (a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a partial line written when the process was killed
    return records


def _position(record: dict[str, Any]) -> tuple[int, int]:
    """(stage order, step) of a record; eval records sit at the stage they evaluate."""
    stage = record.get("at_stage", record["stage"])
    return STAGE_ORDER.get(stage, 0), int(record["step"])


class MetricLogger:
    """Writes records to ``<run_dir>/<jsonl_name>`` and TensorBoard; shows a tqdm bar."""

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, *, enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / cfg.jsonl_name
        self.tb_dir = self.run_dir / "tensorboard"
        self._writer = None
        self._bar = None

    # ---- resume ---------------------------------------------------------------------------------
    @property
    def removed_path(self) -> Path:
        """Side file of records cut away on resume or by a new run."""
        return self.jsonl_path.with_name(self.jsonl_path.stem + ".removed.jsonl")

    def truncate_after(self, stage: str, step: int, reason: str = "") -> int:
        """Keep the records up to (stage, step), move the later ones to the side file, rebuild TensorBoard.
        Returns the number of records moved."""
        if not self.enabled:
            return 0
        limit = (STAGE_ORDER[stage], step)
        records = read_records(self.jsonl_path)
        kept = [r for r in records if _position(r) <= limit]
        self._replace_log(kept, [r for r in records if _position(r) > limit], reason or f"resume at {stage} step {step}")
        return len(records) - len(kept)

    def start_new(self, reason: str) -> int:
        """A new run in this directory: every old record goes to the side file. Returns how many."""
        if not self.enabled:
            return 0
        records = read_records(self.jsonl_path)
        self._replace_log([], records, reason)
        return len(records)

    def _replace_log(self, kept: list[dict], removed: list[dict], reason: str) -> None:
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if removed:
            with self.removed_path.open("a") as f:
                f.writelines(json.dumps({"removed_at": stamp, "reason": reason, "record": r}) + "\n" for r in removed)
            self.write_line(f"[recast-train] {len(removed)} metric records after this point moved to {self.removed_path} ({reason})")
        tmp = self.jsonl_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.jsonl_path)
        self.close_writer()
        if self.tb_dir.exists():
            if removed:
                keep = unique_path(self.run_dir / "tensorboard.removed" / stamp)
                keep.parent.mkdir(parents=True, exist_ok=True)
                self.tb_dir.rename(keep)
                self.write_line(f"[recast-train] previous TensorBoard events moved to {keep}")
            else:
                shutil.rmtree(self.tb_dir)  # holds only scalars of the kept records, rebuilt below
        for record in kept:
            self._to_tensorboard(record)

    # ---- writing ------------------------------------------------------------------------------
    def log(self, stage: str, step: int, rollout_budget: int, metrics: dict[str, float], **extra: Any) -> dict:
        """Write one record; returns it. Non-finite values are kept (as null in JSON) and named in the bar."""
        record = {"stage": stage, "step": int(step), "rollout_budget": int(rollout_budget), **extra}
        for key, value in metrics.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else None
        if not self.enabled:
            return record
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._to_tensorboard(record)
        return record

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        if not self.cfg.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir))
        stage, step, budget = record["stage"], record["step"], record["rollout_budget"]
        for key, value in record.items():
            if key in ("stage", "step", "rollout_budget", "at_stage") or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(f"{stage}/{key}", value, step)
            if stage != "sft":
                self._writer.add_scalar(f"{stage}_vs_budget/{key}", value, budget)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- progress bar -----------------------------------------------------------------------
    def start_bar(self, desc: str, total: int, initial: int = 0) -> None:
        self.close_bar()
        if self.enabled and self.cfg.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update_bar(self, figures: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items()}, refresh=False)
            self._bar.update(1)

    def write_line(self, text: str) -> None:
        """Print a line without breaking the bar (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        self.close_writer()
