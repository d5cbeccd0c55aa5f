"""Import first in a benchmark script: puts the repository, not ``benchmarks/``, on ``sys.path``.

The scripts are named after what they measure (``simulator.py``, ``models.py``), so with their own
folder first on the path ``import simulator`` would import the script itself.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))
