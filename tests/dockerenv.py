"""The docker tests' harness: a private engine, a debootstrap base image and a registry that
requires a password (tools/docker-env), a wheelhouse made on the host, images built from it.

Everything is real and local: the engine is Debian's dockerd, the registry Debian's
docker-registry with htpasswd, the images are built offline from the wheelhouse. A test skips
only when those packages cannot be installed here (``tools/docker-env`` says which are
missing); `.ci/run` installs them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSES = ROOT / "build"


@dataclass(frozen=True)
class DockerEnv:
    host: str  # DOCKER_HOST
    registry: str  # HOST:PORT
    user: str
    password: str
    base_image: str

    def client(self) -> Any:
        import docker  # type: ignore[import-untyped]

        return docker.DockerClient(base_url=self.host, version="auto")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def auth_file(self, path: Path, password: str | None = None) -> Path:
        """A docker config file with this registry's credentials (or a wrong password)."""
        secret = f"{self.user}:{self.password if password is None else password}"
        auth = base64.b64encode(secret.encode()).decode()
        path.write_text(json.dumps({"auths": {self.registry: {"auth": auth}}}))
        path.chmod(0o600)
        return path


def docker_env() -> DockerEnv:
    """Starts (or finds) the engine, the base image and the registry; skips when the Debian
    packages they come from are not installed and cannot be."""
    script = ROOT / "tools" / "docker-env"
    result = subprocess.run(
        [str(script), "up"], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode == 3:
        pytest.skip(f"docker tests need Debian packages: {result.stderr.strip()}")
    if result.returncode != 0:
        raise RuntimeError(f"tools/docker-env up failed:\n{result.stderr[-3000:]}")
    settings = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return DockerEnv(
        host=settings["DOCKER_HOST"],
        registry=settings["BRINELL_REGISTRY"],
        user=settings["BRINELL_REGISTRY_USER"],
        password=Path(settings["BRINELL_REGISTRY_PASSWORD_FILE"]).read_text().strip(),
        base_image=settings["BRINELL_BASE_IMAGE"],
    )


def wheelhouse(extras: str) -> Path:
    """`make wheelhouse EXTRAS=...`: dependencies (kept while pyproject.toml and
    images/wheelhouse.txt are unchanged) and this checkout's own wheel (made every time)."""
    out = WHEELHOUSES / f"wheelhouse-{extras.replace(',', '-')}"
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            "wheelhouse",
            f"EXTRAS={extras}",
            f"WHEELHOUSE={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-3000:]
        raise RuntimeError(f"make wheelhouse failed:\n{output}")
    return out


def build_image(env: DockerEnv, dockerfile: str, tag: str, context: Path, **args: str) -> float:
    """Builds with the engine's classic builder (Debian's engine has no BuildKit plugin);
    returns the seconds it took. Layers are cached by the engine between runs."""
    started = time.monotonic()
    command = ["docker", "build", "-q", "--network", "host", "-f", str(ROOT / dockerfile)]
    command += ["-t", tag, "--build-arg", f"BASE_IMAGE={env.base_image}"]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    result = subprocess.run(
        [*command, str(context)],
        env={**env.env(), "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker build {dockerfile} failed:\n{result.stderr[-4000:]}")
    return time.monotonic() - started


def push(env: DockerEnv, tag: str) -> None:
    """Pushes with the registry's password (a throwaway docker config, not ~/.docker)."""
    config = WHEELHOUSES / "docker-config"
    config.mkdir(parents=True, exist_ok=True)
    env.auth_file(config / "config.json")
    result = subprocess.run(
        ["docker", "--config", str(config), "push", "-q", tag],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker push {tag} failed:\n{result.stderr[-2000:]}")
