"""The control plane server: wiring, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio  # `health.aio`, under the name its stubs know
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from brinell import limits
from brinell.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    artifact_service_pb2,
    artifact_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    entry_point_service_pb2,
    entry_point_service_pb2_grpc,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    plugin_service_pb2,
    plugin_service_pb2_grpc,
)

from .api.accounts import AuthServicer
from .api.auth import AuthInterceptor, agent_from_certificate
from .api.models import ArtifactServicer, ModelServicer
from .api.plugins import PluginServicer
from .api.services import AgentServicer, EntryPointServicer, ExperimentServicer, JobServicer
from .domain.accounts import Accounts
from .domain.agents import AgentDirectory
from .domain.entry_points import EntryPointManager
from .domain.experiments import ExperimentManager
from .domain.jobs import JobManager
from .domain.models import Job
from .domain.notify import Notifier
from .domain.paging import PageTokens
from .domain.plugins import PluginManager
from .domain.registry import ModelRegistry
from .domain.scheduler import Scheduler, SchedulerConfig
from .domain.uploads import Inspector
from .store.blobs import BlobStore, SharedBlobStore
from .store.bus import LocalBus, PgBus
from .store.db import Database
from .store.repositories import Settings
from .tracking import MlflowTracking, NullTracking, Tracking

log = logging.getLogger("brinell.controlplane")

SERVICE_NAMES = [
    experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name,
    entry_point_service_pb2.DESCRIPTOR.services_by_name["EntryPointService"].full_name,
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    plugin_service_pb2.DESCRIPTOR.services_by_name["PluginService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
]

SERVER_OPTIONS = [
    # Agents hold long streams: ping them to notice dead peers, and accept their pings.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", limits.MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_SEND_BYTES),
]


@dataclass
class ServerConfig:
    """Embedded defaults: everything under ``data_dir`` (SQLite, blobs, MLflow store)."""

    host: str = "127.0.0.1"
    port: int = 7070
    data_dir: Path = field(default_factory=lambda: Path.home() / ".brinell" / "server")
    # SQLAlchemy URL; default sqlite under data_dir. `postgresql://…` works too.
    database_url: str | None = None
    # MLflow tracking URI; default a SQLite store under data_dir; "none" turns MLflow off.
    mlflow_tracking_uri: str | None = None
    heartbeat_interval: float = 5.0
    lease_duration: float = 30.0
    reaper_interval: float = 1.0
    grace_period: float = 10.0
    max_archive_bytes: int = 512 << 20
    # TLS: PEM certificate and key files (both, or neither for plaintext). With a client CA,
    # mutual TLS: every client must present a certificate that CA signed; one whose common
    # name is `agents/{agent_id}` is that agent's credential (others still send a token).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # The first admin's token, used only when the database has no users yet; None: random.
    # (BRINELL_BOOTSTRAP_TOKEN; for deployments that take it from a secret store.)
    bootstrap_token: str | None = field(
        default_factory=lambda: os.environ.get("BRINELL_BOOTSTRAP_TOKEN") or None
    )
    # This process's name among the replicas sharing a PostgreSQL; None: host name and a
    # random suffix (a restarted replica is a new one: the agents it held reconnect).
    replica_id: str | None = None


class ControlPlane:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        data = config.data_dir.expanduser().resolve()
        data.mkdir(parents=True, exist_ok=True)
        self.data_dir = data
        self.db = Database(config.database_url or f"sqlite:///{data / 'brinell.db'}")
        self.replica = (config.replica_id or f"{socket.gethostname()}-{secrets.token_hex(3)}")[:64]
        # On PostgreSQL several replicas may share the database: blobs live in it (the data
        # directory only caches them) and replicas tell each other of changes (LISTEN/NOTIFY).
        shared = not self.db.is_sqlite
        self.blobs = (
            SharedBlobStore(data / "blobs", self.db) if shared else BlobStore(data / "blobs")
        )
        bus = PgBus(self.db.url, self.replica) if shared else LocalBus()
        self.tracking: Tracking = self._tracking(config, data)
        self.notifier = Notifier(bus)
        # Rekeyed at start with the secret in the database (shared by the replicas).
        self.tokens = PageTokens(secrets.token_bytes(32))
        self.scheduler = Scheduler(
            self.db,
            self.notifier,
            self.tracking,
            SchedulerConfig(
                config.heartbeat_interval,
                config.lease_duration,
                config.reaper_interval,
                config.grace_period,
            ),
            self._job_env,
            self.replica,
        )
        self.accounts = Accounts(
            self.db,
            self.tokens,
            lambda token_id: self.scheduler.close_sessions(token_id, "its token was revoked"),
        )
        audit = self.accounts.audit
        self.experiments = ExperimentManager(self.db, self.tracking, self.tokens, audit)
        inspector = Inspector()  # one bound on upload inspections, for both kinds
        self.entry_points = EntryPointManager(
            self.db, self.blobs, self.tokens, config.max_archive_bytes, inspector
        )
        self.jobs = JobManager(
            self.db, self.tracking, self.notifier, self.scheduler, self.tokens, audit
        )
        self.agents = AgentDirectory(self.db, self.scheduler, self.tokens, self.accounts)
        self.plugins = PluginManager(
            self.db, self.blobs, self.tokens, config.max_archive_bytes, audit, inspector
        )
        self.registry = ModelRegistry(self.jobs, self.tracking, self.tokens, audit)
        self.admin_token_file: Path | None = None
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @staticmethod
    def _tracking(config: ServerConfig, data: Path) -> Tracking:
        uri = config.mlflow_tracking_uri
        if uri == "none":
            return NullTracking()
        if uri:
            return MlflowTracking(uri, None)
        return MlflowTracking(f"sqlite:///{data / 'mlflow.db'}", data / "mlartifacts")

    def _secret(self) -> bytes:
        """Signs page tokens; kept in the database, so tokens survive restarts and every
        replica accepts the others'. A data directory from before keeps its secret."""
        old = self.data_dir / "secret"
        fresh = old.read_bytes() if old.is_file() else secrets.token_bytes(32)
        with self.db.session() as s:
            stored = Settings.get_or_add(s, "page_token_secret", base64.b64encode(fresh).decode())
        return base64.b64decode(stored)

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        c = self.config
        if not (c.tls_cert or c.tls_key or c.tls_client_ca):
            return None
        if not (c.tls_cert and c.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        return grpc.ssl_server_credentials(
            [(c.tls_key.read_bytes(), c.tls_cert.read_bytes())],
            root_certificates=c.tls_client_ca.read_bytes() if c.tls_client_ca else None,
            # gRPC Python can require and verify a client certificate, or not ask for one:
            # there is no "verify if presented", so a client CA means mutual TLS for all.
            require_client_auth=c.tls_client_ca is not None,
        )

    def _job_env(self, job: Job) -> dict[str, str]:
        env = {"BRINELL_EXPERIMENT": f"experiments/{job.experiment_id}"}
        if job.mlflow_run_id:
            env["MLFLOW_TRACKING_URI"] = self.tracking.tracking_uri
            env["MLFLOW_RUN_ID"] = job.mlflow_run_id
        return env

    async def start(self) -> int:
        await asyncio.to_thread(self.db.migrate)
        self.tokens.rekey(await asyncio.to_thread(self._secret))
        self.admin_token_file = await asyncio.to_thread(
            self.accounts.bootstrap, self.data_dir, self.config.bootstrap_token
        )
        client_ca = self.config.tls_client_ca
        server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[
                AuthInterceptor(self.accounts, agent_from_certificate if client_ca else None)
            ],
        )
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.accounts), server)
        experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(
            ExperimentServicer(self.experiments), server
        )
        entry_point_service_pb2_grpc.add_EntryPointServiceServicer_to_server(
            EntryPointServicer(self.entry_points), server
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.jobs), server)
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.scheduler, self.agents, self.blobs), server
        )
        plugin_service_pb2_grpc.add_PluginServiceServicer_to_server(
            PluginServicer(self.plugins), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry), server
        )
        artifact_service_pb2_grpc.add_ArtifactServiceServicer_to_server(
            ArtifactServicer(self.registry), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{self.config.host}:{self.config.port}"
        credentials = self._tls_credentials()
        self.port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}")
        await self.scheduler.start(f"{self.config.host}:{self.port}")
        await server.start()
        self.server = server
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "control plane %s listening on %s:%d (data: %s)",
            self.replica,
            self.config.host,
            self.port,
            self.data_dir,
        )
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        await self.scheduler.stop()
        self.tracking.close()
        self.db.close()


async def _serve(config: ServerConfig) -> None:
    cp = ControlPlane(config)
    await cp.start()
    print(f"brinell control plane listening on {config.host}:{cp.port}", flush=True)
    if cp.admin_token_file is not None:
        print(
            f"first start: created user 'admin'; its token is in {cp.admin_token_file} "
            "(readable only by you). `brinell login --token-file PATH` stores it for the CLI "
            "and SDK (with the default --data-dir they find it there by themselves).",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await cp.stop()


def serve_forever(config: ServerConfig) -> None:
    """Runs the control plane until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=os.environ.get("BRINELL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up is noise
    asyncio.run(_serve(config))
