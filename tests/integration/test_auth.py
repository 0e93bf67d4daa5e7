"""Credentials on every RPC: the RPC x credential matrix, tokens, roles, forged agents."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass

from brinell import Client, PermissionDeniedError, UnauthenticatedError
from brinell.credentials import open_channel
from brinell.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    artifact_service_pb2,
    auth_service_pb2,
    entry_point_service_pb2,
    experiment_service_pb2,
    job_pb2,
    job_service_pb2,
    model_service_pb2,
    plugin_service_pb2,
)
from tests.conftest import (
    ADMIN_TOKEN,
    SLEEPY_MLPROJECT,
    ServerThread,
    make_server,
    start_server,
    tar_gz,
    wait_until,
)
from tests.simagent import SimAgent

SERVICE_MODULES = [
    experiment_service_pb2,
    entry_point_service_pb2,
    job_service_pb2,
    agent_service_pb2,
    plugin_service_pb2,
    model_service_pb2,
    artifact_service_pb2,
    auth_service_pb2,
]

# What each RPC needs, written out here (not read from the server) so the test checks the
# server's policy instead of repeating it. A new RPC without a line here fails the test.
READ, WRITE, ADMIN, SELF, ANY, CONNECT, BLOB = (
    "read",
    "write",
    "admin",
    "self",
    "any",
    "connect",
    "blob",
)
EXPECTED = {
    "ExperimentService": {
        "CreateExperiment": WRITE,
        "GetExperiment": READ,
        "ListExperiments": READ,
        "UpdateExperiment": WRITE,
        "DeleteExperiment": WRITE,
    },
    "EntryPointService": {
        "UploadEntryPoint": WRITE,
        "GetEntryPoint": READ,
        "ListEntryPoints": READ,
        "GetEntryPointRevision": READ,
        "ListEntryPointRevisions": READ,
    },
    "JobService": {
        "SubmitJob": WRITE,
        "GetJob": READ,
        "ListJobs": READ,
        "WatchJob": READ,
        "StreamJobLogs": READ,
        "CancelJob": WRITE,
    },
    "AgentService": {
        "Connect": CONNECT,
        "DownloadBlob": BLOB,
        "GetAgent": READ,
        "ListAgents": READ,
        "DrainAgent": ADMIN,
    },
    "PluginService": {
        "UploadPlugin": ADMIN,
        "GetPlugin": READ,
        "ListPlugins": READ,
        "GetPluginVersion": READ,
        "ListPluginVersions": READ,
        "ListPluginTasks": READ,
        "YankPluginVersion": ADMIN,
        "DeletePluginVersion": ADMIN,
    },
    "ModelService": {
        "RegisterModel": WRITE,
        "GetModel": READ,
        "ListModels": READ,
        "GetModelVersion": READ,
        "ListModelVersions": READ,
        "SetModelAlias": WRITE,
        "DeleteModelAlias": WRITE,
        "ResolveModel": READ,
        "DownloadModelVersion": READ,
    },
    "ArtifactService": {"ListJobArtifacts": READ, "DownloadJobArtifact": READ},
    "AuthService": {
        "WhoAmI": ANY,
        "CreateUser": ADMIN,
        "GetUser": SELF,
        "ListUsers": ADMIN,
        "UpdateUser": ADMIN,
        "CreateToken": SELF,
        "ListTokens": SELF,
        "RevokeToken": SELF,
        "ListAuditEvents": ADMIN,
        "CreateGroup": ADMIN,
        "GetGroup": SELF,
        "ListGroups": SELF,
        "DeleteGroup": ADMIN,
        "AddGroupMember": ADMIN,
        "RemoveGroupMember": ADMIN,
    },
}

# The RPCs that touch one experiment (or a job in it) get a request naming the red group's
# experiment `redexp` and its job; a member of only the blue group must be refused them.
# Every other RPC is called with an empty request.
SCOPED = {
    ("ExperimentService", "CreateExperiment"): {
        "experiment": {"group": "groups/red"},
        "experiment_id": "more",
    },
    ("ExperimentService", "GetExperiment"): {"name": "experiments/redexp"},
    ("ExperimentService", "UpdateExperiment"): {
        "experiment": {"name": "experiments/redexp", "description": "x"},
        "update_mask": "description",
    },
    ("ExperimentService", "DeleteExperiment"): {"name": "experiments/redexp"},
    ("JobService", "SubmitJob"): {
        "experiment": "experiments/redexp",
        "entry_point": "entryPoints/sleepy",
        "parameters": {"label": "x"},
    },
    ("JobService", "GetJob"): {"name": "{job}"},
    ("JobService", "WatchJob"): {"name": "{job}"},
    ("JobService", "StreamJobLogs"): {"name": "{job}"},
    ("JobService", "CancelJob"): {"name": "{job}"},
    ("ArtifactService", "ListJobArtifacts"): {"job": "{job}"},
    ("ArtifactService", "DownloadJobArtifact"): {"job": "{job}", "path": "model.pt"},
    ("ModelService", "RegisterModel"): {
        "model_id": "m",
        "job": "{job}",
        "artifact_path": "model.pt",
    },
}

# Which kinds of access each credential has.
GRANTS = {
    "none": set(),
    "bad token": set(),
    "revoked token": set(),
    "expired token": set(),
    "disabled user": set(),
    "viewer": {READ, SELF, ANY, BLOB},
    # Before "member" and "admin": they may delete `redexp` and cancel its job.
    "other member": {READ, SELF, ANY, BLOB, WRITE},
    "member": {READ, SELF, ANY, BLOB, WRITE},
    "admin": {READ, SELF, ANY, BLOB, WRITE, ADMIN, CONNECT},
    "agent": {ANY, CONNECT, BLOB},
}
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def every_rpc() -> Iterator[tuple[str, Any]]:
    """Every method of every brinell.v1 service, from the proto descriptors."""
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            yield from ((service.name, m) for m in service.methods)


def call(
    channel: grpc.Channel, method: Any, metadata: Any, fields: dict[str, Any] | None = None
) -> grpc.StatusCode:
    """Calls ``method`` with a request of ``fields`` (empty by default); the status it ends
    with (OK included)."""
    pool = descriptor_pool.Default()
    request_cls = GetMessageClass(pool.FindMessageTypeByName(method.input_type.full_name))
    response_cls = GetMessageClass(pool.FindMessageTypeByName(method.output_type.full_name))
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    rpc = getattr(channel, kind)(
        path,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    message = json_format.ParseDict(fields or {}, request_cls())
    request: Any = iter([message]) if method.client_streaming else message
    try:
        result = rpc(request, timeout=10, metadata=metadata)
        if method.server_streaming:
            for _ in result:
                break
            result.cancel()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ServerThread, dict[str, str]]]:
    srv = make_server(tmp_path, database_url=f"sqlite:///{tmp_path / 'brinell.db'}")
    project = tmp_path / "sleepy.tar.gz"
    project.write_bytes(tar_gz({"MLproject": SLEEPY_MLPROJECT}))
    with Client(srv.target, token=ADMIN_TOKEN) as admin:
        admin.groups.create("red")
        admin.groups.create("blue")
        admin.users.create("vera", "viewer", groups=["red"])
        admin.users.create("mia", "member", groups=["red"])
        admin.users.create("bob", "member", groups=["blue"])
        admin.users.create("dan", "member")
        tokens = {
            "admin": ADMIN_TOKEN,
            "viewer": admin.tokens.create(user="vera").secret,
            "member": admin.tokens.create(user="mia").secret,
            "other member": admin.tokens.create(user="bob").secret,
            "agent": admin.tokens.create(agent_id="agent-x").secret,
            "bad token": "brn_" + "x" * 43,
        }
        revoked = admin.tokens.create(user="mia")
        admin.tokens.revoke(revoked.token.id)
        tokens["revoked token"] = revoked.secret
        tokens["expired token"] = admin.tokens.create(user="mia", ttl=1).secret
        tokens["disabled user"] = admin.tokens.create(user="dan").secret
        admin.users.disable("dan")
        with Client(srv.target, token=tokens["member"]) as mia:
            mia.experiments.create("redexp")
            mia.entry_points.push(project, id="sleepy")
            tokens["job"] = mia.jobs.submit("redexp", "sleepy", {"label": "x"}).name
    time.sleep(1.1)  # the 1-second token has expired
    yield srv, tokens
    srv.stop()


def test_every_rpc_checks_the_credential(world: tuple[ServerThread, dict[str, str]]) -> None:
    srv, tokens = world
    rpcs = list(every_rpc())
    declared = {(s, m.name) for s, m in rpcs}
    expected = {(s, name) for s, methods in EXPECTED.items() for name in methods}
    assert declared == expected, f"RPCs without an expectation: {declared ^ expected}"
    results: dict[tuple[str, str, str], grpc.StatusCode] = {}
    with grpc.insecure_channel(srv.target) as channel:
        for who in GRANTS:
            metadata = [("authorization", f"Bearer {tokens[who]}")] if who in tokens else []
            for service, method in rpcs:
                fields = _scoped(service, method.name, tokens["job"])
                results[(who, service, method.name)] = call(channel, method, metadata, fields)
    wrong = []
    for (who, service, name), code in results.items():
        need = EXPECTED[service][name]
        if who in ("none", "bad token", "revoked token", "expired token", "disabled user"):
            want_ok, want = False, grpc.StatusCode.UNAUTHENTICATED
        elif need in GRANTS[who] and not (who == "other member" and (service, name) in SCOPED):
            want_ok, want = True, None
        else:
            want_ok, want = False, grpc.StatusCode.PERMISSION_DENIED
        if (want_ok and code in DENIED) or (not want_ok and code != want):
            wrong.append(f"{who} {service}.{name}: got {code.name}, want {want or 'allowed'}")
    assert not wrong, "\n".join(wrong)
    assert len(results) == len(GRANTS) * len(rpcs)
    print(f"matrix: {len(rpcs)} RPCs x {len(GRANTS)} credentials = {len(results)} calls")


def _scoped(service: str, method: str, job: str) -> dict[str, Any] | None:
    fields = SCOPED.get((service, method))
    if fields is None:
        return None
    return json.loads(json.dumps(fields).replace("{job}", job))


def test_health_and_reflection_need_no_credential(world: Any) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    srv, _ = world
    with grpc.insecure_channel(srv.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="brinell.v1.AuthService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in next(answers).list_services_response.service}
        assert "brinell.v1.AuthService" in names


def test_tokens_are_shown_once_stored_hashed_and_revoked_at_once(tmp_path: Path) -> None:
    srv = make_server(tmp_path, database_url=f"sqlite:///{tmp_path / 'brinell.db'}")
    try:
        with Client(srv.target, token=ADMIN_TOKEN) as admin:
            admin.users.create("mia", "member")
            new = admin.tokens.create(user="mia", description="laptop")
            assert new.secret.startswith("brn_") and len(new.secret) > 40
            with Client(srv.target, token=new.secret) as mia:
                me = mia.whoami()
                assert (me.principal, me.role, me.token) == ("users/mia", "member", new.token.name)
                mine = list(mia.tokens.list())
                assert [t.name for t in mine] == [new.token.name]
                own = mia.tokens.create(description="second")  # members make their own
                assert own.token.user == "users/mia"
                with pytest.raises(PermissionDeniedError):
                    mia.tokens.create(user="admin")  # ... but not someone else's
                with pytest.raises(PermissionDeniedError):
                    list(mia.users.list())
                admin.tokens.revoke(new.token.id)
                with pytest.raises(UnauthenticatedError, match="revoked"):
                    mia.whoami()  # at once, despite the server's cache
            assert admin.tokens.revoke(new.token.id).revoked  # twice is fine
        stored = sqlite3.connect(tmp_path / "brinell.db").execute("SELECT hash FROM tokens")
        hashes = [h for (h,) in stored]
        assert hashes and all(len(h) == 64 for h in hashes)
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("brinell.db*"))
        assert new.secret.encode() not in raw and own.secret.encode() not in raw
    finally:
        srv.stop()


def test_members_act_on_their_own_and_the_audit_log_says_who(tmp_path: Path) -> None:
    srv = make_server(tmp_path, database_url=f"sqlite:///{tmp_path / 'brinell.db'}")
    project = tmp_path / "sleepy.tar.gz"
    project.write_bytes(tar_gz({"MLproject": SLEEPY_MLPROJECT}))
    try:
        with Client(srv.target, token=ADMIN_TOKEN) as admin:
            admin.users.create("mia", "member")
            admin.users.create("dan", "member")
            admin.users.create("vera", "viewer")
            mia = Client(srv.target, token=admin.tokens.create(user="mia").secret)
            dan = Client(srv.target, token=admin.tokens.create(user="dan").secret)
            vera = Client(srv.target, token=admin.tokens.create(user="vera").secret)
            exp = mia.experiments.create("mias")
            assert exp.creator == "users/mia"
            ep, rev = mia.entry_points.push(project, id="sleepy")
            assert (ep.creator, rev.creator) == ("users/mia", "users/mia")
            job = mia.jobs.submit("mias", "sleepy", {"label": "x"})
            assert job.creator == "users/mia"
            with pytest.raises(PermissionDeniedError, match="users/mia"):
                dan.jobs.cancel(job)
            with pytest.raises(PermissionDeniedError):
                dan.entry_points.push(project, id="sleepy")  # nobody replaces mia's code
            with pytest.raises(PermissionDeniedError):
                dan.experiments.delete("mias")
            with pytest.raises(PermissionDeniedError):
                vera.jobs.submit("mias", "sleepy", {"label": "x"})
            assert vera.jobs.get(job).creator == "users/mia"  # viewers read
            assert mia.jobs.cancel(job, "changed my mind").state.value == "CANCELLED"
            second = dan.jobs.submit("mias", "sleepy", {"label": "y"})
            admin.jobs.cancel(second)  # admins cancel anything
            with pytest.raises(PermissionDeniedError):
                list(mia.audit.list())
            events = [(e.actor, e.action, e.resource) for e in admin.audit.list()]
            for c in (mia, dan, vera):
                c.close()
        for expected in [
            ("users/admin", "user.create", "users/mia"),
            ("users/mia", "job.submit", f"jobs/{job.id}"),
            ("users/mia", "job.cancel", f"jobs/{job.id}"),
            ("users/dan", "job.submit", f"jobs/{second.id}"),
            ("users/admin", "job.cancel", f"jobs/{second.id}"),
        ]:
            assert expected in events, (expected, events)
        assert not any(e[1] == "job.cancel" and e[0] == "users/dan" for e in events)
    finally:
        srv.stop()


def test_first_start_writes_the_admin_token_file(tmp_path: Path) -> None:
    data = tmp_path / "server"
    env_token = os.environ.pop("BRINELL_BOOTSTRAP_TOKEN")
    try:
        proc, target = start_server(data)
    finally:
        os.environ["BRINELL_BOOTSTRAP_TOKEN"] = env_token
    try:
        path = data / "admin.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()
        assert secret != ADMIN_TOKEN and secret.startswith("brn_")
        assert proc.proc.stdout is not None
        assert str(path) in proc.proc.stdout.readline()
        with Client(target, token=secret) as c:
            assert c.whoami().principal == "users/admin"
        wrong = Client(target, token="brn_wrong-0123456789abcdefghij")
        with wrong, pytest.raises(UnauthenticatedError):
            list(wrong.experiments.list())
        saved = {k: os.environ[k] for k in ("BRINELL_TOKEN", "HOME")}
        os.environ.pop("BRINELL_TOKEN")
        os.environ["HOME"] = str(tmp_path)  # no ~/.brinell/credentials, no default server
        try:
            with Client(target) as c, pytest.raises(UnauthenticatedError, match="required"):
                c.whoami()
        finally:
            os.environ.update(saved)
    finally:
        proc.stop()
    # A restart keeps the admin and does not write a new token.
    proc, target = start_server(data)
    try:
        assert path.read_text().strip() == secret
        with Client(target, token=secret) as c:
            assert c.whoami().principal == "users/admin"
    finally:
        proc.stop()


# -- forged agents ---------------------------------------------------------------------


def _job_world(c: Client, tmp_path: Path) -> None:
    project = tmp_path / "sleepy.tar.gz"
    project.write_bytes(tar_gz({"MLproject": SLEEPY_MLPROJECT}))
    c.experiments.create("exp")
    c.entry_points.push(project, id="sleepy")


def _refused(agent: SimAgent) -> grpc.RpcError:
    wait_until(lambda: agent.error is not None, timeout=10)
    assert agent.error is not None
    return agent.error


def test_an_agent_credential_names_its_agent(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    try:
        with Client(srv.target, token=ADMIN_TOKEN) as admin:
            admin.users.create("mia", "member")
            member = admin.tokens.create(user="mia").secret
            bound = admin.tokens.create(agent_id="gpu-1", queues=["gpu"], labels={"gpu": "h100"})
            unbound = admin.tokens.create(agent=True)
            # A member is not an agent.
            err = _refused(SimAgent(srv.target, "gpu-1", token=member, wait=False))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            # A bound token registers only as its agent, only on its queues.
            err = _refused(
                SimAgent(srv.target, "gpu-2", queues=["gpu"], token=bound.secret, wait=False)
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "gpu-1" in err.details()
            err = _refused(
                SimAgent(srv.target, "gpu-1", queues=["default"], token=bound.secret, wait=False)
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            gpu = SimAgent(srv.target, "gpu-1", queues=["gpu"], token=bound.secret)
            assert admin.agents.get("gpu-1").labels == {"gpu": "h100"}  # the token's labels
            # An unbound token is bound by its first registration, and keeps that id.
            first = SimAgent(srv.target, "cpu-9", token=unbound.secret)
            first.close()
            err = _refused(SimAgent(srv.target, "cpu-10", token=unbound.secret, wait=False))
            assert "cpu-9" in err.details()
            assert next(
                t for t in admin.tokens.list() if t.name == unbound.token.name
            ).agent_id == ("cpu-9")
            # Hijack: another credential cannot take over a connected agent's id...
            other = admin.tokens.create(agent_id="gpu-1").secret
            err = _refused(SimAgent(srv.target, "gpu-1", queues=["gpu"], token=other, wait=False))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            # ... while the same credential reconnecting replaces its old stream.
            again = SimAgent(srv.target, "gpu-1", queues=["gpu"], token=bound.secret)
            wait_until(lambda: gpu.error is not None or not gpu.thread.is_alive())
            # Revoking the token ends its live session.
            admin.tokens.revoke(bound.token.id)
            wait_until(lambda: not again.thread.is_alive())
            for a in (gpu, again):
                a.close()
    finally:
        srv.stop()


def test_a_session_touches_only_its_own_attempts(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    try:
        with Client(srv.target, token=ADMIN_TOKEN) as admin:
            _job_world(admin, tmp_path)
            real = SimAgent(srv.target, "real", token=admin.tokens.create(agent_id="real").secret)
            job = admin.jobs.submit("exp", "sleepy", {"label": "x"})
            assignment = real.next("assignment")
            assert assignment.job.name == f"jobs/{job.id}"
            real.update(job.name, 1, job_pb2.JOB_STATE_RUNNING)
            wait_until(lambda: admin.jobs.get(job).state.value == "RUNNING")
            real.close()  # its attempt keeps its lease
            fake = SimAgent(srv.target, "fake", token=admin.tokens.create(agent_id="fake").secret)
            # Reports and log lines about an attempt the session was not given are refused,
            # each on its own: the stream lives on.
            fake.update(job.name, 1, job_pb2.JOB_STATE_SUCCEEDED, exit_code=0)
            fake.logs(job.name, 1, [(1, "forged line")])
            fake.logs(job.name, 99, [(i, "x" * 10) for i in range(1, 200)])
            fake.update("jobs/not-a-job-name", 1, job_pb2.JOB_STATE_SUCCEEDED, exit_code=0)
            fake.update(job.name, 1, 0)  # no state
            fake.heartbeat([])
            ack = fake.next("log_ack")  # refused lines are acked so nobody resends them
            assert ack.job == job.name
            time.sleep(0.5)
            got = admin.jobs.get(job)
            assert got.state.value == "RUNNING" and got.agent == "agents/real"
            assert list(admin.jobs.logs(job)) == []
            assert fake.error is None and fake.thread.is_alive()
            # The fake's own work still flows on the same stream after all that.
            mine = admin.jobs.submit("exp", "sleepy", {"label": "y"})
            fake.next("assignment")
            fake.update(mine.name, 1, job_pb2.JOB_STATE_RUNNING)
            fake.logs(mine.name, 1, [(1, "real line")])
            fake.update(mine.name, 1, job_pb2.JOB_STATE_SUCCEEDED, exit_code=0)
            wait_until(lambda: admin.jobs.get(mine).state.value == "SUCCEEDED")
            assert [ln.text for ln in admin.jobs.logs(mine)] == ["real line"]
            fake.close()
    finally:
        srv.stop()


def test_blobs_only_for_who_may_read_them(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    try:
        with Client(srv.target, token=ADMIN_TOKEN) as admin:
            _job_world(admin, tmp_path)
            digest = admin.entry_points.get("sleepy").latest_revision.digest  # type: ignore[union-attr]
            admin.users.create("vera", "viewer")
            viewer = admin.tokens.create(user="vera").secret
            a_token = admin.tokens.create(agent_id="a").secret
            b_token = admin.tokens.create(agent_id="b").secret
            a = SimAgent(srv.target, "a", token=a_token)
            b = SimAgent(srv.target, "b", token=b_token, queues=["other"])

            def download(token: str) -> grpc.StatusCode:
                with open_channel(srv.target, token, None, []) as ch:
                    stub = agent_service_pb2_grpc.AgentServiceStub(ch)
                    request = agent_service_pb2.DownloadBlobRequest(digest=digest)
                    try:
                        list(stub.DownloadBlob(request))
                    except grpc.RpcError as err:
                        return err.code()
                return grpc.StatusCode.OK

            assert download(a_token) == grpc.StatusCode.NOT_FOUND  # no assignment yet
            assert download(viewer) == grpc.StatusCode.OK  # the entry point is readable
            admin.jobs.submit("exp", "sleepy", {"label": "x"})
            a.next("assignment")
            assert download(a_token) == grpc.StatusCode.OK
            assert download(b_token) == grpc.StatusCode.NOT_FOUND  # not b's assignment
            for agent in (a, b):
                agent.close()
    finally:
        srv.stop()


def test_registration_inputs_are_bounded(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    try:
        err = _refused(SimAgent(srv.target, "big", hostname="h" * 10_000, wait=False))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(err.details()) < 300
        many = {f"k{i}": "v" for i in range(1000)}
        err = _refused(SimAgent(srv.target, "labels", labels=many, wait=False))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "32" in err.details()
        err = _refused(SimAgent(srv.target, "x" * 5000, wait=False))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.details()) < 300
    finally:
        srv.stop()


def test_cli_users_tokens_login_and_audit(tmp_path: Path) -> None:
    import json

    from tests.conftest import run_cli

    srv = make_server(tmp_path, database_url=f"sqlite:///{tmp_path / 'brinell.db'}")
    home = tmp_path / "home"
    home.mkdir()
    try:
        t = srv.target
        assert "created user mia (member)" in run_cli(t, "user", "create", "mia").stdout
        made = run_cli(t, "token", "create", "--user", "mia", "--ttl", "1d", "--description", "ci")
        secret = made.stdout.strip()
        assert secret.startswith("brn_") and "shown only now" in made.stderr
        listed = json.loads(run_cli(t, "token", "list", "--user", "mia", "--json").stdout)
        assert len(listed) == 1 and listed[0]["description"] == "ci"
        assert secret not in json.dumps(listed) and listed[0]["expire_time"]
        # login stores the token (0600) after checking it; later commands use it.
        env = dict(os.environ, HOME=str(home))
        env.pop("BRINELL_TOKEN")
        cli = [sys.executable, "-m", "brinell.cli", "-t", t]
        login = subprocess.run(
            [*cli, "login"], input=secret + "\n", text=True, capture_output=True, env=env
        )
        assert login.returncode == 0, login.stderr
        assert "as users/mia (member)" in login.stdout
        stored = home / ".brinell" / "credentials"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        me = subprocess.run([*cli, "whoami"], text=True, capture_output=True, env=env)
        assert me.stdout.strip() == "users/mia member"
        denied = subprocess.run([*cli, "user", "list"], text=True, capture_output=True, env=env)
        assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
        token_id = listed[0]["name"].split("/")[1]
        assert "revoked" in run_cli(t, "token", "revoke", token_id).stdout
        after = subprocess.run([*cli, "whoami"], text=True, capture_output=True, env=env)
        assert after.returncode == 2 and "UNAUTHENTICATED" in after.stderr
        audit = run_cli(t, "audit", "list").stdout
        assert "user.create" in audit and "token.revoke" in audit
    finally:
        srv.stop()


def test_groups_scope_what_members_see_and_submit(tmp_path: Path) -> None:
    import json as _json

    from brinell import FailedPreconditionError, InvalidArgumentError, NotFoundError
    from tests.conftest import run_cli

    srv = make_server(tmp_path, database_url=f"sqlite:///{tmp_path / 'brinell.db'}")
    project = tmp_path / "sleepy.tar.gz"
    project.write_bytes(tar_gz({"MLproject": SLEEPY_MLPROJECT}))
    try:
        t = srv.target
        assert "created group red" in run_cli(t, "group", "create", "red").stdout
        run_cli(t, "group", "create", "blue")
        run_cli(t, "user", "create", "mia", "-g", "red")
        run_cli(t, "user", "create", "bob", "-g", "blue")
        run_cli(t, "user", "create", "pat")  # no --group: the group `default`
        with Client(t, token=ADMIN_TOKEN) as admin:
            mia = Client(t, token=admin.tokens.create(user="mia").secret)
            bob = Client(t, token=admin.tokens.create(user="bob").secret)
            pat = Client(t, token=admin.tokens.create(user="pat").secret)
            assert admin.users.get("pat").groups == ("groups/default",)
            red = mia.experiments.create("redexp")  # mia's only group
            assert red.group == "groups/red"
            assert pat.experiments.create("patexp").group == "groups/default"
            assert admin.experiments.create("adminexp").group == "groups/default"
            mia.entry_points.push(project, id="sleepy")  # entry points are cluster-wide
            job = mia.jobs.submit("redexp", "sleepy", {"label": "x"})
            bob_job = bob.jobs.submit(bob.experiments.create("blueexp"), "sleepy", {"label": "y"})
            # Each member lists and reads only their groups' experiments and jobs.
            assert [e.id for e in mia.experiments.list()] == ["redexp"]
            assert [j.id for j in mia.jobs.list()] == [job.id]
            assert [j.id for j in bob.jobs.list()] == [bob_job.id]
            assert {e.id for e in admin.experiments.list()} == {
                "redexp",
                "patexp",
                "adminexp",
                "blueexp",
            }
            for denied in (
                lambda: bob.experiments.get("redexp"),
                lambda: bob.jobs.get(job),
                lambda: list(bob.jobs.logs(job)),
                lambda: bob.jobs.submit("redexp", "sleepy", {"label": "z"}),
                lambda: bob.experiments.create("sneaky", group="red"),
            ):
                with pytest.raises(PermissionDeniedError, match="groups/red"):
                    denied()
            # Groups a member is not in are not shown to them; admins see all.
            assert [g.id for g in mia.groups.list()] == ["red"]
            with pytest.raises(NotFoundError):
                mia.groups.get("blue")
            assert {g.id for g in admin.groups.list()} == {"default", "red", "blue"}
            # Joining a second group: creating then needs the group named.
            run_cli(t, "group", "add", "blue", "mia")
            assert "users/mia" in admin.groups.get("blue").members
            with pytest.raises(InvalidArgumentError, match="group"):
                mia.experiments.create("which")
            assert mia.experiments.create("both", group="blue").group == "groups/blue"
            assert bob.jobs.get(mia.jobs.submit("both", "sleepy", {"label": "b"})).id
            run_cli(t, "group", "remove", "blue", "mia")
            with pytest.raises(PermissionDeniedError):
                mia.experiments.get("both")
            # A group with experiments is not deleted; an empty one is.
            with pytest.raises(FailedPreconditionError, match="experiments"):
                admin.groups.delete("red")
            admin.groups.create("empty")
            admin.groups.delete("empty")
            listed = _json.loads(run_cli(t, "group", "list", "--json").stdout)
            assert {g["name"] for g in listed} == {"groups/default", "groups/red", "groups/blue"}
            for c in (mia, bob, pat):
                c.close()
        events = [(e.action, e.resource) for e in admin_events(t)]
        assert ("group.create", "groups/red") in events
        assert ("group.member.add", "groups/blue") in events
    finally:
        srv.stop()


def admin_events(target: str) -> list[Any]:
    with Client(target, token=ADMIN_TOKEN) as admin:
        return list(admin.audit.list())
