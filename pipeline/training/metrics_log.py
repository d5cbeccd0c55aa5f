"""Per-epoch metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from invattn.pipeline.training.checkpoint import cannot_write, write_text_atomic

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only metrics log of a run directory.

    On resume from a checkpoint of epoch ``e``, lines of later epochs (written before a crash
    that came ahead of the checkpoint) are dropped so the log matches the resumed state.
    """

    def __init__(self, run_dir: Path, *, resume_epoch: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = self.read(self.path)
        kept = [r for r in records if r.get("epoch", 0) <= resume_epoch]
        if len(kept) != len(records) or not self.path.exists():
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_epoch + 1)

    @staticmethod
    def read(path: Path) -> list[dict]:
        """All records of a ``metrics.jsonl`` file (empty if it does not exist)."""
        path = Path(path)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self, record: dict) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
        except OSError as exc:
            try:  # drop a half-written line (truncating needs no space)
                os.truncate(self.path, size)
            except OSError:
                pass
            raise cannot_write(self.path, exc, "the earlier epochs are kept") from None
        if self._tb is not None:
            step = int(record["epoch"])
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
