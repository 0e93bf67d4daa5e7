"""``python -m brinell.controlplane.healthcheck [HOST:PORT]``: exit status 0 when the control
plane's gRPC health service answers SERVING (for container health checks)."""

from __future__ import annotations

import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    target = argv[0] if argv else "127.0.0.1:7070"
    with grpc.insecure_channel(target) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # its stubs type no methods
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
            print(f"{target}: {code}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
