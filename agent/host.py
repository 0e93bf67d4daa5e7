"""What an agent tells the control plane about its host: memory, GPUs, its own version."""

from __future__ import annotations

import os
from importlib import metadata

from brinell.v1 import agent_pb2


def discover_gpus() -> list[agent_pb2.Gpu]:
    """GPUs of this host as ``brinell.v1.Gpu`` messages.

    Empty for now: GPU discovery (NVML / nvidia-smi, by UUID) is a later issue.
    """
    return []


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
