"""A test client that speaks the agent protocol by hand, to drive the control plane's side
of `AgentService.Connect` message by message (the real agent is tested end to end)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from brinell.credentials import open_channel
from brinell.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, job_pb2
from tests.conftest import ADMIN_TOKEN

_END = object()


class SimAgent:
    def __init__(
        self,
        target: str,
        agent_id: str,
        queues: list[str] | None = None,
        slots: int = 1,
        labels: dict[str, str] | None = None,
        running: list[tuple[str, int]] | None = None,
        token: str = ADMIN_TOKEN,
        hostname: str = "sim",
        wait: bool = True,
    ) -> None:
        """``token``: the credential it connects with (the tests' admin by default);
        ``wait=False`` returns without waiting for Registered (see ``error``)."""
        self.channel = open_channel(target, token, None, [])
        self.stub = agent_service_pb2_grpc.AgentServiceStub(self.channel)
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.inbox: queue.Queue[agent_service_pb2.ConnectResponse] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.outbox.put(
            agent_service_pb2.ConnectRequest(
                register=agent_service_pb2.Register(
                    agent_id=agent_id,
                    hostname=hostname,
                    queues=queues or ["default"],
                    labels=labels or {},
                    capacity=agent_pb2.Capacity(cpus=1, slots=slots),
                    running=[
                        agent_service_pb2.RunningAttempt(job=j, attempt=a)
                        for j, a in (running or [])
                    ],
                    version="sim",
                    executor="sim",
                )
            )
        )
        self.call = self.stub.Connect(self._requests())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.registered = self.next("registered") if wait else None

    def _requests(self) -> Iterator[agent_service_pb2.ConnectRequest]:
        while True:
            msg = self.outbox.get()
            if msg is _END:
                return
            yield msg

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.inbox.put(msg)
        except grpc.RpcError as exc:
            self.error = exc

    def next(self, kind: str, timeout: float = 10.0) -> Any:
        """The next message of this kind (others of different kinds are skipped)."""
        while True:
            msg = self.inbox.get(timeout=timeout)
            if msg.WhichOneof("message") == kind:
                return getattr(msg, kind)

    def send(self, **kwargs: Any) -> None:
        self.outbox.put(agent_service_pb2.ConnectRequest(**kwargs))

    def update(
        self, job: str, attempt: int, state: int, exit_code: int | None = None, message: str = ""
    ) -> None:
        self.send(
            attempt_update=agent_service_pb2.AttemptUpdate(
                job=job,
                attempt=attempt,
                state=state,
                has_exit_code=exit_code is not None,
                exit_code=exit_code or 0,
                message=message,
            )
        )

    def logs(self, job: str, attempt: int, lines: list[tuple[int, str]]) -> None:
        self.send(
            log_batch=agent_service_pb2.LogBatch(
                job=job,
                attempt=attempt,
                lines=[
                    job_pb2.LogLine(sequence=seq, text=text, stream=job_pb2.LOG_STREAM_STDOUT)
                    for seq, text in lines
                ],
            )
        )

    def heartbeat(self, running: list[tuple[str, int]]) -> None:
        self.send(
            heartbeat=agent_service_pb2.Heartbeat(
                running=[agent_service_pb2.RunningAttempt(job=j, attempt=a) for j, a in running]
            )
        )

    def close(self) -> None:
        self.outbox.put(_END)
        self.call.cancel()
        self.channel.close()
