"""Generated code is committed; it must match what `make proto` makes from the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    # The same command as `make proto`, written elsewhere (and without reinstalling the venv).
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            "proto",
            f"PROTO_OUT={tmp_path}",
            f"PY={sys.executable}",
            f"BIN={bin_dir}",
        ],
        cwd=ROOT,
        check=True,
    )
    generated = sorted((tmp_path / "brinell/v1").iterdir())
    assert generated, "protoc generated nothing"
    stale = [
        p.name
        for p in generated
        if (ROOT / "proto/brinell/v1" / p.name).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"run `make proto`: stale generated files {stale}"
    committed = {p.name for p in (ROOT / "proto/brinell/v1").glob("*_pb2*.py*")}
    assert committed == {p.name for p in generated}, "generated files without a proto"


def test_buf_lint_is_clean() -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
