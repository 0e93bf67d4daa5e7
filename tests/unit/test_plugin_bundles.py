"""Agent side of plugins: bundles extracted once per digest, the job's env, hostile bundles."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from brinell.agent.executor import (
    Outcome,
    PluginBundle,
    ProcessExecutor,
    RunSpec,
    Stream,
    build_env,
)
from brinell.agent.workspace import (
    BlobCache,
    BlobError,
    PluginBundles,
    UnsafeArchiveError,
    WorkspaceError,
    extract_plugin_bundle,
    plugin_bundle_root,
)
from brinell.pack import pack_directory

MB = 1024 * 1024


def _plugin_dir(tmp_path: Path, package: str, value: str, wrap: str | None = None) -> Path:
    root = tmp_path / f"src-{package}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    folder = root / wrap if wrap else root
    (folder / package).mkdir(parents=True)
    (folder / "brinell-plugin.yaml").write_text(
        f"name: {package.replace('_', '-')}\nversion: 1.0.0\npackage: {package}\n"
    )
    (folder / package / "__init__.py").write_text(f"VALUE = {value!r}\n")
    return root


def _bundle(tmp_path: Path, src: Path) -> tuple[Path, str]:
    data = pack_directory(src)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / f"{src.name}.tar.gz"
    path.write_bytes(data)
    return path, digest


async def _chunks(data: bytes) -> object:
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


def test_bundle_is_extracted_once_per_digest(tmp_path: Path) -> None:
    archive, digest = _bundle(tmp_path, _plugin_dir(tmp_path, "demo_plugin", "v1"))
    bundles = PluginBundles(tmp_path / "cache" / "plugins")
    assert bundles.lookup(digest) is None

    async def main() -> list[tuple[Path, bool]]:
        # Concurrent jobs that pin the same version wait for one extraction.
        return await asyncio.gather(
            *(bundles.extract(archive, digest, 10 * MB, 100) for _ in range(5))
        )

    results = asyncio.run(main())
    dest = bundles.path_for(digest)
    assert dest == tmp_path / "cache" / "plugins" / digest.removeprefix("sha256:")
    assert [r[0] for r in results] == [dest] * 5
    assert sorted(r[1] for r in results) == [False, False, False, False, True]
    assert bundles.lookup(digest) == dest
    # Nothing half-done is left beside it, and its files cannot be changed by a job.
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
    init = dest / "demo_plugin" / "__init__.py"
    assert init.read_text() == "VALUE = 'v1'\n"
    assert not os.stat(init).st_mode & 0o222
    inode = os.stat(init).st_ino

    # Later jobs (and a restarted agent) reuse it as is.
    again, extracted = extract_plugin_bundle(archive, dest.parent, digest, 10 * MB, 100)
    assert (again, extracted) == (dest, False)
    assert os.stat(init).st_ino == inode
    assert plugin_bundle_root(dest, "demo_plugin") == dest


def test_bundle_through_the_blob_cache_and_a_wrapping_folder(tmp_path: Path) -> None:
    src = _plugin_dir(tmp_path, "wrapped", "w", wrap="my-plugin")
    data = pack_directory(src)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = BlobCache(tmp_path / "cache" / "blobs")
    blob = asyncio.run(cache.fetch(digest, _chunks(data)))  # type: ignore[arg-type]
    dest, extracted = extract_plugin_bundle(blob, tmp_path / "plugins", digest, MB, 100)
    assert extracted
    # `tar czf b.tgz my-plugin/`: the single top-level folder is what goes on PYTHONPATH.
    assert plugin_bundle_root(dest, "wrapped") == dest / "my-plugin"
    assert plugin_bundle_root(dest) == dest / "my-plugin"  # found by its manifest
    with pytest.raises(WorkspaceError, match="no Python package 'other'"):
        plugin_bundle_root(dest, "other")


def _evil_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        manifest = b"name: evil\nversion: 1.0.0\npackage: evil\n"
        info = tarfile.TarInfo("brinell-plugin.yaml")
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        payload = b"print('pwned')\n"
        if kind == tarfile.REGTYPE:
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        else:
            tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "link", "problem"),
    [
        ("../evil/__init__.py", tarfile.REGTYPE, "", "contains '..'"),
        ("/tmp/evil/__init__.py", tarfile.REGTYPE, "", "absolute path"),
        ("evil", tarfile.SYMTYPE, "/usr/lib/python3", "absolute path"),
        ("evil", tarfile.SYMTYPE, "../../../../outside", "outside the workspace"),
        ("evil/dev", tarfile.CHRTYPE, "", "device file"),
    ],
)
def test_malicious_bundle_is_refused_and_leaves_nothing(
    tmp_path: Path, name: str, kind: bytes, link: str, problem: str
) -> None:
    archive = _evil_tar(tmp_path / "evil.tgz", name, kind, link)
    digest = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    plugins = tmp_path / "cache" / "plugins"
    bundles = PluginBundles(plugins)
    with pytest.raises(UnsafeArchiveError, match=problem):
        asyncio.run(bundles.extract(archive, digest, MB, 100))
    assert list(plugins.iterdir()) == []  # no bundle, no temporary folder
    assert bundles.lookup(digest) is None
    assert not (tmp_path / "cache" / "evil").exists()


def test_bundle_limits_and_digests_are_enforced(tmp_path: Path) -> None:
    archive, digest = _bundle(tmp_path, _plugin_dir(tmp_path, "big", "x" * 5000))
    with pytest.raises(UnsafeArchiveError, match="max_archive_bytes"):
        extract_plugin_bundle(archive, tmp_path / "plugins", digest, 1000, 100)
    with pytest.raises(UnsafeArchiveError, match="max_archive_files"):
        extract_plugin_bundle(archive, tmp_path / "plugins", digest, MB, 2)
    assert list((tmp_path / "plugins").iterdir()) == []
    # The digest names a folder: anything but sha256:<hex> is refused.
    with pytest.raises(BlobError, match="malformed digest"):
        extract_plugin_bundle(archive, tmp_path / "plugins", "sha256:../../x", MB, 100)


def _two_plugins(tmp_path: Path) -> tuple[PluginBundle, PluginBundle]:
    bundles = []
    for plugin, package, value in (("alpha", "alpha_pkg", "A"), ("beta", "beta_pkg", "B")):
        archive, digest = _bundle(tmp_path, _plugin_dir(tmp_path, package, value))
        dest, _ = extract_plugin_bundle(archive, tmp_path / "plugins", digest, MB, 100)
        bundles.append(
            PluginBundle(
                plugin=f"plugins/{plugin}",
                version="1.0.0" if plugin == "alpha" else "2.1.0",
                digest=digest,
                package=package,
                path=plugin_bundle_root(dest, package),
            )
        )
    return bundles[0], bundles[1]


def test_env_for_two_pinned_plugins(tmp_path: Path) -> None:
    alpha, beta = _two_plugins(tmp_path)
    spec = RunSpec(
        project_root=tmp_path,
        entry="main",
        parameters={"name": "Ada", "rounds": "3"},
        job_id="j1",
        attempt=1,
        plugins=(alpha, beta),
    )
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/opt/site:/opt/more"}
    env = build_env(spec, base=base, python="/venv/bin/python")
    assert env["PYTHONPATH"] == os.pathsep.join(
        [str(alpha.path), str(beta.path), "/opt/site:/opt/more"]
    )
    assert env["BRINELL_PLUGIN_PACKAGES"] == "alpha_pkg,beta_pkg"
    assert json.loads(env["BRINELL_PLUGINS"]) == [
        {
            "plugin": "plugins/alpha",
            "version": "1.0.0",
            "digest": alpha.digest,
            "package": "alpha_pkg",
            "path": str(alpha.path),
        },
        {
            "plugin": "plugins/beta",
            "version": "2.1.0",
            "digest": beta.digest,
            "package": "beta_pkg",
            "path": str(beta.path),
        },
    ]
    assert json.loads(env["BRINELL_PARAMETERS"]) == {"name": "Ada", "rounds": "3"}

    # No PYTHONPATH before: only the bundles. No plugins: nothing stale from the agent's env.
    assert build_env(spec, base={})["PYTHONPATH"] == f"{alpha.path}{os.pathsep}{beta.path}"
    bare = RunSpec(project_root=tmp_path, entry="main", parameters={}, job_id="j", attempt=1)
    stale = {"PYTHONPATH": "/opt/site", "BRINELL_PLUGIN_PACKAGES": "old", "BRINELL_PLUGINS": "x"}
    env = build_env(bare, base=stale)
    assert env["PYTHONPATH"] == "/opt/site"
    assert env["BRINELL_PLUGIN_PACKAGES"] == ""
    assert json.loads(env["BRINELL_PLUGINS"]) == []
    assert json.loads(env["BRINELL_PARAMETERS"]) == {}


@pytest.mark.skipif(sys.platform != "linux", reason="process groups via /proc")
def test_a_real_job_imports_its_pinned_plugins(tmp_path: Path) -> None:
    alpha, beta = _two_plugins(tmp_path)
    root = tmp_path / "project"
    root.mkdir()
    script = (
        "import json, os, alpha_pkg, beta_pkg; "
        "print(alpha_pkg.VALUE + beta_pkg.VALUE, os.environ['BRINELL_PLUGIN_PACKAGES'], "
        "json.loads(os.environ['BRINELL_PARAMETERS'])['who'])"
    )
    (root / "MLproject").write_text(
        "name: t\nentry_points:\n  main:\n    parameters:\n      who: {type: string}\n"
        f'    command: "python -c \\"{script}\\""\n'
    )
    spec = RunSpec(
        project_root=root,
        entry="main",
        parameters={"who": "Ada"},
        job_id="j1",
        attempt=1,
        plugins=(alpha, beta),
    )
    lines: list[tuple[Stream, str]] = []
    result = asyncio.run(
        ProcessExecutor().run(spec, on_line=lambda stream, text: lines.append((stream, text)))
    )
    assert result.outcome is Outcome.SUCCEEDED, lines
    assert (Stream.STDOUT, "AB alpha_pkg,beta_pkg Ada") in lines
