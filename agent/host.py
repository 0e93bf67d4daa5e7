"""What an agent tells the control plane about its host: memory, GPUs, its own version."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from importlib import metadata

from brinell.v1 import agent_pb2

log = logging.getLogger("brinell.agent.host")

_MIB = 1024 * 1024
_SMI_QUERY = "--query-gpu=uuid,name,memory.total"


def discover_gpus() -> list[agent_pb2.Gpu]:
    """GPUs of this host by UUID: through NVML (nvidia-ml-py) where its library loads, else
    from ``nvidia-smi --query-gpu``; none when neither is there."""
    gpus = _from_nvml()
    if gpus is None:
        gpus = _from_nvidia_smi()
    return gpus or []


def _from_nvml() -> list[agent_pb2.Gpu] | None:
    try:
        import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no types
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver library: the usual case on a host without GPUs
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid, name = pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                agent_pb2.Gpu(
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    model=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(memory),
                )
            )
        return gpus
    except Exception as exc:
        log.warning("NVML found a driver but listing GPUs failed: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[agent_pb2.Gpu]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, _SMI_QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed; reporting no GPUs: %s", exc)
        return []
    gpus = []
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0].startswith("GPU-"):
            continue
        try:
            memory = int(float(fields[2]) * _MIB)
        except ValueError:
            memory = 0
        gpus.append(agent_pb2.Gpu(uuid=fields[0], model=fields[1], memory_bytes=memory))
    return gpus


def memory_bytes() -> int:
    """Physical memory of the host, from /proc/meminfo where there is one."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def agent_version() -> str:
    try:
        return metadata.version("brinell")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
