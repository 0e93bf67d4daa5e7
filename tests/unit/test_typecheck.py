"""mypy sees our packages as installed: the real types of `brinell.*` and `brinell.v1.*`.

Checked on the folders, every import of our own code and of the generated stubs was `Any`, so
`make lint` passed whatever the code did with them. This probe fails if that ever returns.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """\
from brinell import Client
from brinell.v1 import job_pb2, job_service_pb2_grpc

reveal_type(job_pb2.Job().state)
reveal_type(Client("127.0.0.1:1").jobs.get("j"))
reveal_type(job_service_pb2_grpc.JobServiceStub)
job_pb2.Job(attempt="one")
"""


def _build_tree() -> None:
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tools/typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_tree()


def test_mypy_resolves_our_packages_and_the_generated_stubs(tmp_path: Path) -> None:
    _build_tree()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", str(probe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    out = result.stdout + result.stderr
    assert 'Revealed type is "brinell.v1.job_pb2._JobState.ValueType"' in out, out
    assert 'Revealed type is "brinell.types.Job"' in out, out
    assert "JobServiceStub" in out and '"Any"' not in out, out
    assert 'Argument "attempt" to "Job" has incompatible type "str"; expected "int"' in out, out
    assert result.returncode == 1, out
