"""`python -m brinell.controlplane`: the server without the CLI's extra imports."""

from __future__ import annotations

import argparse
from pathlib import Path

from brinell.extras import needs

with needs("server", "python -m brinell.controlplane"):
    from .server import ServerConfig, serve_forever


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m brinell.controlplane")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--data-dir", type=Path, default=Path.home() / ".brinell" / "server")
    p.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: SQLite in the data directory); several replicas may "
        "share one postgresql:// database",
    )
    p.add_argument(
        "--replica-id",
        help="this replica's name among those sharing the database (default: host name and "
        "a random suffix)",
    )
    p.add_argument("--mlflow-tracking-uri")
    p.add_argument("--heartbeat-interval", type=float, default=5.0)
    p.add_argument("--lease-duration", type=float, default=30.0)
    p.add_argument("--grace-period", type=float, default=10.0)
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="... and this private key (PEM)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        help="mutual TLS: require client certificates signed by this CA; one with common "
        "name agents/ID is that agent's credential",
    )
    a = p.parse_args()
    serve_forever(
        ServerConfig(
            host=a.host,
            port=a.port,
            data_dir=a.data_dir,
            database_url=a.database_url,
            replica_id=a.replica_id,
            mlflow_tracking_uri=a.mlflow_tracking_uri,
            heartbeat_interval=a.heartbeat_interval,
            lease_duration=a.lease_duration,
            grace_period=a.grace_period,
            tls_cert=a.tls_cert,
            tls_key=a.tls_key,
            tls_client_ca=a.tls_client_ca,
        )
    )


if __name__ == "__main__":
    main()
