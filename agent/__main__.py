"""``python -m brinell.agent``: the agent daemon without the `brinell` CLI's dependencies."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from brinell.extras import needs

with needs("agent", "python -m brinell.agent"):
    from .config import EXECUTORS, PULL_POLICIES, AgentConfig, per_queue
    from .daemon import run_forever


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must be KEY=VALUE")
    return key, value


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(
        prog="python -m brinell.agent",
        description="Brinell agent: takes jobs from the control plane and runs them here.",
    )
    parser.add_argument("--control-plane", required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="Q",
        help="queue to take jobs from (repeat; default: default)",
    )
    parser.add_argument(
        "--label",
        action="append",
        type=_label,
        default=[],
        metavar="K=V",
        help="label jobs may select on (repeat)",
    )
    parser.add_argument("--slots", type=int, default=1, help="jobs run at once (default: 1)")
    parser.add_argument("--work-dir", type=Path, help="workspaces and archive cache")
    parser.add_argument(
        "--prefect-api-url",
        default="auto",
        metavar="URL|auto|none",
        help="auto: run a local Prefect server (default); none: set no PREFECT_API_URL",
    )
    parser.add_argument("--agent-id", help="agent id (default: the host name)")
    parser.add_argument(
        "--grace-period", type=float, help="SIGTERM to SIGKILL seconds (default: 10)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="on SIGTERM or a drain, seconds running jobs may finish (default: 60)",
    )
    parser.add_argument(
        "--keep-workspaces",
        type=int,
        help="finished attempts' workspaces kept, newest first (default: 10)",
    )
    parser.add_argument(
        "--workspace-ttl-hours",
        type=float,
        help="finished workspaces older than this are removed (default: 24; 0: no limit)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the agent's token (default: BRINELL_TOKEN, ~/.brinell/credentials)",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate to verify the control plane")
    parser.add_argument("--tls-cert", type=Path, help="this agent's certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="this agent's private key (mutual TLS)")
    parser.add_argument(
        "--executor",
        default="process",
        choices=list(EXECUTORS),
        help="process: jobs run in this environment (default); docker: one container each",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[QUEUE=]IMAGE",
        help="docker: image for jobs that name none (per queue; repeat)",
    )
    parser.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="[QUEUE=]MODE",
        help="docker: network mode of containers, host|none|bridge (per queue; default host)",
    )
    parser.add_argument(
        "--registry-auth",
        type=Path,
        help="docker: config file with registry credentials (default: BRINELL_REGISTRY_AUTH, "
        "~/.docker/config.json)",
    )
    parser.add_argument("--pull", default="always", choices=list(PULL_POLICIES))
    parser.add_argument(
        "--keep-failed-containers",
        action="store_true",
        help="docker: keep the containers of attempts that did not succeed",
    )
    parser.add_argument(
        "--container-watchdog",
        type=float,
        default=60.0,
        metavar="S",
        help="docker: a container whose agent stopped (died, froze) for S seconds ends itself, "
        "so it does not run on beside its requeued attempt (default 60; 0: never)",
    )
    parser.add_argument(
        "--warm-runtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="process executor: run Python jobs in a pre-imported warm runtime, about a second "
        "each instead of ten (default on; --no-warm-runtime runs every job cold)",
    )
    parser.add_argument(
        "--warm-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module the warm runtime imports ahead of the first job (repeatable), e.g. torch",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    extra: dict[str, Any] = {}
    if args.work_dir is not None:
        extra["work_dir"] = args.work_dir
    if args.grace_period is not None:
        extra["grace_period"] = args.grace_period
    if args.keep_workspaces is not None:
        extra["keep_workspaces"] = args.keep_workspaces
    if args.drain_timeout is not None:
        extra["drain_timeout"] = args.drain_timeout
    if args.workspace_ttl_hours is not None:
        extra["workspace_ttl_hours"] = args.workspace_ttl_hours
    if args.token_file is not None:
        try:
            extra["token"] = args.token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--token-file: {exc.strerror}: {args.token_file}")
    extra.update(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        return AgentConfig(
            control_plane=args.control_plane,
            queues=args.queues or ["default"],
            labels=dict(args.label),
            agent_id=args.agent_id,
            slots=args.slots,
            prefect_api_url=args.prefect_api_url,
            executor=args.executor,
            images=per_queue(args.image),
            networks=per_queue(args.network),
            registry_auth=args.registry_auth,
            pull=args.pull,
            keep_failed_containers=args.keep_failed_containers,
            container_watchdog=args.container_watchdog,
            warm_runtime=args.warm_runtime,
            warm_imports=args.warm_import,
            **extra,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    run_forever(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
