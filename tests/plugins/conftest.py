"""Puts the built-in plugins' folders on sys.path, as the agent's PYTHONPATH does in a job."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

for folder in (ROOT / "plugins").iterdir():
    if (folder / "brinell-plugin.yaml").exists() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
