"""Run mypy on the `brinell` distribution as it installs, not as the folders are named.

The distribution maps folders to packages (`sdk/` is `brinell`, `controlplane/` is
`brinell.controlplane`, `proto/brinell/v1/` is `brinell.v1`, ...). mypy cannot follow that
mapping: it names a module after its path, and it does not run the import hook that a PEP 660
editable install uses. Checked on the folders themselves, every `import brinell...` resolved to
nothing and was silently `Any`.

So this script builds the installed layout as a tree of symbolic links under
`build/typecheck/` (one real directory per package of `[tool.setuptools] packages`, one link per
source file, from `package-dir`), checks `-p brinell` there (`mypy_path` in pyproject points at
the tree, so mypy sees the generated `.pyi` stubs beside the generated code), and prints mypy's
report with the links' paths turned back into the files you edit. The tree is rebuilt on every
run, so new and deleted files never leave it stale, and it is never what runs.

Usage: python tools/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"
SOURCE_SUFFIXES = (".py", ".pyi")
MARKERS = ("py.typed",)


def source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools takes `package` from (the longest mapped prefix wins)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[n:])
    return ROOT / package_dir.get("", ".") / Path(*parts)


def build_tree() -> dict[Path, Path]:
    """Make the link tree; return each linked directory mapped to its source folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages: list[str] = config["packages"]
    package_dir: dict[str, str] = config.get("package-dir", {})
    shutil.rmtree(TREE, ignore_errors=True)
    dirs: dict[Path, Path] = {}
    for package in packages:
        src = source_dir(package, package_dir)
        dst = TREE / Path(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        dirs[dst] = src
        for f in src.iterdir():
            if f.is_file() and (f.suffix in SOURCE_SUFFIXES or f.name in MARKERS):
                (dst / f.name).symlink_to(f)
    return dirs


def main(argv: list[str]) -> int:
    dirs = build_tree()
    # Longest first, so `brinell/controlplane/` is not taken for `brinell/` + `controlplane/`.
    prefixes = sorted(
        (
            (os.path.relpath(d, ROOT) + os.sep, os.path.relpath(s, ROOT) + os.sep)
            for d, s in dirs.items()
        ),
        key=lambda p: len(p[0]),
        reverse=True,
    )
    path_re = re.compile(r"^(" + "|".join(re.escape(p) for p, _ in prefixes) + r")")
    by_prefix = dict(prefixes)

    def real(line: str) -> str:
        return path_re.sub(lambda m: by_prefix[m.group(1)], line, count=1)

    proc = subprocess.Popen(
        [sys.executable, "-m", "mypy", "-p", "brinell", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(real(line))
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
