"""Generated code is committed; it must match what `make proto` makes from the protos."""

from __future__ import annotations

import shutil
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


def _proto_module(dest: Path) -> Path:
    """A copy of the buf module (buf.yaml and the .proto files) to edit."""
    dest.mkdir()
    shutil.copy(ROOT / "buf.yaml", dest / "buf.yaml")
    shutil.copytree(ROOT / "proto", dest / "proto", ignore=shutil.ignore_patterns("*.py*"))
    return dest


def test_buf_breaking_flags_a_removed_field(tmp_path: Path) -> None:
    """`make lint` runs buf breaking; its configuration must catch a real wire break."""
    buf = str(Path(sys.executable).parent / "buf")
    same = _proto_module(tmp_path / "same")
    unchanged = subprocess.run(
        [buf, "breaking", str(same), "--against", str(ROOT)], capture_output=True, text=True
    )
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    changed = _proto_module(tmp_path / "changed")
    job_proto = changed / "proto/brinell/v1/job.proto"
    text = job_proto.read_text()
    assert "  string state_reason = 10;\n" in text
    job_proto.write_text(text.replace("  string state_reason = 10;\n", ""))
    broken = subprocess.run(
        [buf, "breaking", str(changed), "--against", str(ROOT)], capture_output=True, text=True
    )
    assert broken.returncode != 0
    assert 'Previously present field "10" with name "state_reason"' in broken.stdout
