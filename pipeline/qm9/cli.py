"""``invattn preprocess-qm9 source=PATH out=DIR [key=value ...]`` (config ``configs/preprocess_qm9.yaml``)."""
from __future__ import annotations

from omegaconf import DictConfig

from invattn.pipeline.qm9.stage import preprocess

__all__ = ["preprocess_command"]


def preprocess_command(cfg: DictConfig) -> int:
    """Run the QM9 preprocessing stage; 0 on success, 1 when some shards failed (re-run to retry).

    Bad input (missing source, unknown form, bad CSV header, out dir of another run) raises
    ``FileNotFoundError`` / ``ValueError`` / ``FileExistsError``, printed by ``invattn`` as one line.
    """
    try:
        preprocess(cfg)
    except RuntimeError as exc:
        print(f"invattn preprocess-qm9: {exc}")
        return 1
    return 0
