"""TLS and mutual TLS end to end: server, agent (by certificate), CLI and SDK.

The test makes its own CA, server certificate and agent certificates with `cryptography`,
plus a rogue CA whose agent certificate must be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brinell import Client, UnavailableError
from brinell.credentials import TLS, open_channel
from brinell.v1 import auth_service_pb2, auth_service_pb2_grpc, experiment_service_pb2
from brinell.v1 import experiment_service_pb2_grpc as exp_grpc
from tests.conftest import ADMIN_TOKEN, SLEEPY_MLPROJECT, Proc, tar_gz, wait_until
from tests.e2e.conftest import start_server, wait_connected


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


class CA:
    def __init__(self, directory: Path, cn: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{cn}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = f"{cn.replace('/', '-')}-{self.path.stem}"
        cert_path = self.dir / f"{stem}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(key, self.dir / f"{stem}.key")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, rogue = CA(pki, "brinell-ca"), CA(pki, "rogue-ca")
    return {
        "ca": ca.path,
        "rogue_ca": rogue.path,
        "server": ca.issue("control-plane", server=True),
        # An agent's certificate names it; any other is only a ticket to connect.
        "agent": ca.issue("agents/tls-agent"),
        "user": ca.issue("cli-user"),
        "rogue_agent": rogue.issue("agents/tls-agent"),
    }


def _serve(tmp_path: Path, pki: dict[str, Any], mutual: bool) -> Iterator[str]:
    cert, key = pki["server"]
    extra = ["--tls-client-ca", str(pki["ca"])] if mutual else []
    proc, target = start_server(
        tmp_path / "server", 0, "--tls-cert", str(cert), "--tls-key", str(key), *extra
    )
    yield target
    proc.stop()


@pytest.fixture
def tls_server(tmp_path: Path, pki: dict[str, Any]) -> Iterator[str]:
    yield from _serve(tmp_path, pki, mutual=False)


@pytest.fixture
def mtls_server(tmp_path: Path, pki: dict[str, Any]) -> Iterator[str]:
    yield from _serve(tmp_path, pki, mutual=True)


def _whoami(target: str, tls: TLS, token: str | None) -> str:
    with open_channel(target, token, tls, []) as channel:
        reply = auth_service_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_service_pb2.WhoAmIRequest(), timeout=10
        )
        return str(reply.principal)


def _code(fn: Any) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_sdk_and_cli_verify_the_server(tls_server: str, pki: dict[str, Any]) -> None:
    with Client(tls_server, tls=str(pki["ca"])) as c:
        assert c.whoami().principal == "users/admin"
    for wrong in (False, str(pki["rogue_ca"])):  # plaintext, or a CA that did not sign it
        with Client(tls_server, tls=wrong, timeout=5) as c, pytest.raises(UnavailableError):
            c.whoami()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "brinell.cli",
            "-t",
            tls_server,
            "--tls-ca",
            str(pki["ca"]),
            "whoami",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and cli.stdout.strip() == "users/admin admin", cli.stderr


def test_mutual_tls_certificates(mtls_server: str, pki: dict[str, Any]) -> None:
    target = mtls_server
    ca = pki["ca"].read_bytes()
    cert, key = (p.read_bytes() for p in pki["agent"])
    user_cert, user_key = (p.read_bytes() for p in pki["user"])
    rogue_cert, rogue_key = (p.read_bytes() for p in pki["rogue_agent"])
    # An agent's verified certificate is its credential...
    assert _whoami(target, TLS(ca, cert, key), None) == "agents/tls-agent"
    # ... which may not use the user API.
    with open_channel(target, None, TLS(ca, cert, key), []) as channel:
        stub = exp_grpc.ExperimentServiceStub(channel)
        listing = experiment_service_pb2.ListExperimentsRequest()
        assert _code(lambda: stub.ListExperiments(listing, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    # Another certificate of the CA lets a client connect; it still needs a token.
    assert _code(lambda: _whoami(target, TLS(ca, user_cert, user_key), None)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _whoami(target, TLS(ca, user_cert, user_key), ADMIN_TOKEN) == "users/admin"
    # No certificate, or one of another CA: no handshake at all.
    for tls in (TLS(ca), TLS(ca, rogue_cert, rogue_key)):
        assert _code(lambda tls=tls: _whoami(target, tls, ADMIN_TOKEN)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    # The CLI presents a client certificate from BRINELL_TLS_CERT / BRINELL_TLS_KEY.
    user_cert_path, user_key_path = pki["user"]
    cli = subprocess.run(
        [sys.executable, "-m", "brinell.cli", "-t", target, "--tls-ca", str(pki["ca"])]
        + ["whoami"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(
            os.environ, BRINELL_TLS_CERT=str(user_cert_path), BRINELL_TLS_KEY=str(user_key_path)
        ),
    )
    assert cli.returncode == 0 and cli.stdout.strip() == "users/admin admin", cli.stderr


def test_an_agent_runs_a_job_over_mutual_tls(
    mtls_server: str, pki: dict[str, Any], tmp_path: Path
) -> None:
    tls_server = mtls_server
    cert, key = pki["agent"]
    home = tmp_path / "agent-home"
    home.mkdir()
    # The agent holds no token at all (none in its environment, no ~/.brinell): its
    # certificate is its only credential.
    agent = Proc(
        [
            sys.executable,
            "-m",
            "brinell.agent",
            "--control-plane",
            tls_server,
            "--work-dir",
            str(tmp_path / "agent"),
            "--agent-id",
            "tls-agent",
            "--prefect-api-url",
            "none",
            "--tls-ca",
            str(pki["ca"]),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        tmp_path / "tls-agent.log",
        env={"BRINELL_TOKEN": "", "HOME": str(home)},
    )
    project = tmp_path / "sleepy.tar.gz"
    project.write_bytes(tar_gz({"MLproject": SLEEPY_MLPROJECT}))
    try:
        user = TLS.load(pki["ca"], *pki["user"])
        with Client(tls_server, tls=user) as c:
            wait_connected(c, "tls-agent")
            c.experiments.create("tls")
            c.entry_points.push(project, id="sleepy")
            job = c.jobs.submit("tls", "sleepy", {"label": "over-tls"}, timeout=120)
            done = wait_until(
                lambda: (j := c.jobs.get(job)).is_final and j, timeout=120, interval=0.2
            )
            assert done.succeeded, done.state_reason
            assert done.agent == "agents/tls-agent"
            assert "over-tls" in [ln.text for ln in c.jobs.logs(job)]
    finally:
        agent.stop()
