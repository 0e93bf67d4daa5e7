"""Upload-inspection benchmark: what a hostile archive costs the control plane.

Starts a real control plane process and pushes, through the SDK:

- a valid entry point (a few hundred bytes), for reference;
- a gzip bomb: a valid entry point of about 0.5 MB whose tar.gz also holds 500 MiB of zeros
  (just under the 512 MiB an agent extracts: accepted, after a walk through all of it);
- an archive of 100,000 empty entries (about 0.6 MB compressed);

each twice (the second time the same bytes), timing each push and the server's CPU for it.
Then three different bombs at once, while a fourth client calls WhoAmI in a loop: the
latency of those calls against the same calls on the idle server shows whether inspection
holds up the event loop. The server's peak memory (VmHWM) is reported at the end.

Usage: python bench/uploads.py
"""

from __future__ import annotations

import gzip
import io
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import TOKEN, cpu_seconds, start_server  # noqa: E402
from brinell import Client, InvalidArgumentError  # noqa: E402
from tests.conftest import SLEEPY_MLPROJECT, tar_gz  # noqa: E402


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gzip_bomb(salt: bytes, size: int = 500 << 20) -> bytes:
    """A valid entry point whose tar.gz also holds ``size`` bytes of zeros (just under what
    an agent extracts, so it is accepted after a full walk), compressed as it is written;
    ``salt`` makes the bytes differ."""
    out = io.BytesIO()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    project = SLEEPY_MLPROJECT.encode()
    header = tarfile.TarInfo("MLproject")
    header.size = len(project)
    out.write(comp.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
    out.write(comp.compress(project + bytes(-len(project) % 512)))
    header = tarfile.TarInfo("zeros.bin")
    header.size = size
    out.write(comp.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        out.write(comp.compress(zeros))
    salted = tarfile.TarInfo("salt")
    salted.size = len(salt)
    out.write(comp.compress(salted.tobuf(format=tarfile.GNU_FORMAT)))
    out.write(comp.compress(salt + bytes(-len(salt) % 512) + bytes(1024)))
    out.write(comp.flush())
    return out.getvalue()


def many_entries(n: int = 100_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("MLproject"), io.BytesIO(b""))
        for i in range(n):
            tf.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    return gzip.compress(buf.getvalue())


def walk_times(path: Path) -> tuple[float, float]:
    """Seconds to walk ``path`` with the shared archive rules (brinell.archives, tarfile's
    random-access mode, read in order) and with tarfile's stream mode (the alternative)."""
    from brinell import archives

    t0 = time.perf_counter()
    for _ in archives.members(path, archives.Limits()):
        pass
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tarfile.open(path, mode="r|*") as tf:
        while tf.next() is not None:
            pass
    return ours, time.perf_counter() - t0


def timed_push(client: Client, pid: int, path: Path, ep: str) -> tuple[float, float, str]:
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    try:
        client.entry_points.push(path, id=ep)
        outcome = "accepted"
    except InvalidArgumentError as exc:
        outcome = "refused: " + exc.message[:60]
    return time.perf_counter() - t0, cpu_seconds(pid) - cpu0, outcome


def whoami_latencies(target: str, stop: threading.Event, out: list[float]) -> None:
    with Client(target, token=TOKEN) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.whoami()
            out.append(time.perf_counter() - t0)
            time.sleep(0.01)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="brinell-bench-uploads-"))
    files = {
        "valid entry point": tar_gz({"MLproject": SLEEPY_MLPROJECT}),
        "gzip bomb (500 MiB of zeros)": gzip_bomb(b"0"),
        "100,000 entries": many_entries(),
    }
    paths = {}
    for i, (label, data) in enumerate(files.items()):
        paths[label] = tmp / f"{i}.tar.gz"
        paths[label].write_bytes(data)
    walked = walk_times(paths["gzip bomb (500 MiB of zeros)"])
    proc, target = start_server(tmp / "server", None, mlflow=False)
    rows = []
    try:
        with Client(target, token=TOKEN) as client:
            for i, (label, path) in enumerate(paths.items()):
                for attempt in ("first push", "same bytes again"):
                    wall, cpu, outcome = timed_push(client, proc.pid, path, f"ep{i}")
                    rows.append((label, path.stat().st_size, attempt, wall, cpu, outcome))
            idle: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=whoami_latencies, args=(target, stop, idle))
            probe.start()
            time.sleep(3)
            stop.set()
            probe.join()
            bombs = [tmp / f"bomb{i}.tar.gz" for i in range(3)]
            for i, b in enumerate(bombs):
                b.write_bytes(gzip_bomb(str(i + 1).encode()))
            busy: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=whoami_latencies, args=(target, stop, busy))
            probe.start()
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            pushers = [
                threading.Thread(
                    target=lambda p=p, i=i: timed_push(
                        Client(target, token=TOKEN), proc.pid, p, f"bomb{i}"
                    )
                )
                for i, p in enumerate(bombs)
            ]
            for t in pushers:
                t.start()
            for t in pushers:
                t.join()
            together = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
            stop.set()
            probe.join()
        peak = peak_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| archive | size | push | wall | server CPU | outcome |")
    print("|---|---:|---|---:|---:|---|")
    for label, size, attempt, wall, cpu, outcome in rows:
        print(
            f"| {label} | {size / 1e6:.2f} MB | {attempt} | {wall * 1e3:.0f} ms "
            f"| {cpu * 1e3:.0f} ms | {outcome} |"
        )
    print()
    print("| walking the gzip bomb in this process | seconds |")
    print("|---|---:|")
    print(f"| brinell.archives (tarfile random-access mode, in order) | {walked[0]:.2f} |")
    print(rf"| tarfile stream mode (`r\|*`), the alternative | {walked[1]:.2f} |")
    print()
    print(
        f"three different bombs at once: {together[0]:.2f} s wall, {together[1]:.2f} s server CPU"
    )
    print("| WhoAmI latency | calls | p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for label, xs in (("idle server", idle), ("during the three bombs", busy)):
        xs = sorted(xs)
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        print(
            f"| {label} | {len(xs)} | {statistics.median(xs) * 1e3:.1f} ms "
            f"| {p99 * 1e3:.1f} ms | {xs[-1] * 1e3:.1f} ms |"
        )
    print(f"\nserver peak memory (VmHWM): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
