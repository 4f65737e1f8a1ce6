"""The ``zephyr-edge`` console script: the only module reading ``os.environ`` and argv.

    zephyr-edge serve                      run the worker (configuration from ZE_WORKER_*)
    zephyr-edge dev [--port N] [--app U]   zero-setup local worker, prints a write token
    zephyr-edge token --app U [--ttl 1h]   mint a can_write_jwt with the configured secret
    zephyr-edge config                     print the effective configuration as JSON
    zephyr-edge publish --host H --snapshot ID   point hostnames at a stored snapshot
    zephyr-edge rollback --host H --snapshot ID  the same, named for moving back
    zephyr-edge versions --app U [--json]  an app's snapshots with their hostnames
    zephyr-edge replicate --resync URL     send another region whatever it lacks
    zephyr-edge replicate --status         this region's replication state (JSON)
    zephyr-edge replicate --forget URL     drop the queue of a region no longer configured

publish, rollback, versions and replicate take ``--data-dir DIR`` to work on the data of a
``zephyr-edge dev`` worker instead of the production configuration.

Configuration problems exit with status 2 and one message on stderr listing all of them; a
worker that cannot listen (port in use...) logs one fatal line and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zephyr_edge import __version__
from zephyr_edge.cli import commands, devmode
from zephyr_edge.domain import tokens


def _ttl(text: str) -> int:
    try:
        return tokens.parse_ttl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``--data-dir`` of the admin commands (``token`` has its own, with a fallback).
DATA_DIR_HELP = (
    "work on the data of the `zephyr-edge dev` worker whose data directory is DIR (e.g. "
    f"./{devmode.DEV_DATA_DIR}): its local backends and the JWT secret it generated there, instead "
    "of the production configuration (anything set in the environment or the config file still wins)"
)
CONFIGURATION = (
    "configuration as for `serve`: ZE_WORKER_* environment variables and the JSON file named by "
    "ZE_WORKER_CONFIG_JSON; with --data-dir, the data of a `zephyr-edge dev` worker"
)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zephyr-edge``: every subcommand and option is described in
    its ``--help``."""
    parser = argparse.ArgumentParser(
        prog="zephyr-edge",
        description="Self-hostable edge worker for Zephyr micro-frontend deployments. "
        "Configured by ZE_WORKER_* environment variables and the JSON file named by "
        "ZE_WORKER_CONFIG_JSON (whose values win).",
        epilog="Exit status: 0 done; 1 the worker failed at run time (e.g. its port is in use) "
        "or an admin command was refused or found nothing; 2 bad arguments or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "serve", help="run the worker",
        description="Run the worker: serve deployed apps and accept uploads until SIGTERM or SIGINT, "
        "then drain within ZE_WORKER_SHUTDOWN_GRACE_MS. Configuration from ZE_WORKER_* environment "
        "variables and the JSON file named by ZE_WORKER_CONFIG_JSON; JSON log lines on stdout. "
        "Exits 2 listing every configuration problem, 1 when it cannot listen (port in use...).",
    )

    dev = sub.add_parser(
        "dev",
        help="run a zero-setup local worker (local storage and KV, generated secret)",
        description="Local storage and KV under ./zephyr-edge-data (or ZE_WORKER_DATA_DIR), "
        "listening on 127.0.0.1, with a JWT secret generated once and kept in the data "
        "directory; prints where it listens, where deployed apps are served "
        "(http://<label>.localhost:PORT), how to point the build plugin at it, and a ready write "
        "token. Anything set in the environment or the config file wins.",
    )
    dev.add_argument("--port", type=int, help="HTTP port (default: ZE_WORKER_PORT or 8080)")
    dev.add_argument(
        "--app", default=devmode.DEV_APP_UID, metavar="APPLICATION_UID",
        help=f"application of the printed write token (default: {devmode.DEV_APP_UID})",
    )

    token = sub.add_parser(
        "token", help="print a can_write_jwt for an application",
        description="Print a write token (can_write_jwt: HS256, claims application_uid, can_write, exp) "
        "signed with ZE_WORKER_JWT_SECRET, or with the secret `zephyr-edge dev` keeps in its data "
        "directory when none is configured. Give it to the build plugin (as the control plane's jwt) "
        "or send it as the can_write_jwt header of uploads.",
    )
    token.add_argument("--app", required=True, metavar="APPLICATION_UID",
                       help="the token's application_uid (app.repo.org)")
    token.add_argument(
        "--ttl", type=_ttl, default=tokens.DEFAULT_TTL_S, metavar="LIFETIME",
        help="lifetime: seconds or 30m, 1h, 7d (default: 1h)",
    )
    token.add_argument(
        "--data-dir", metavar="DIR",
        help="data directory of `zephyr-edge dev`, whose persisted secret is used when "
        "ZE_WORKER_JWT_SECRET is not set (default: ZE_WORKER_DATA_DIR or ./zephyr-edge-data)",
    )

    sub.add_parser(
        "config", help="print the effective configuration as JSON (secrets redacted)",
        description="Print the effective configuration as JSON: every key with its value (secrets "
        "shown as ***) and its source (env, file or default). Warns on stderr about unknown "
        "ZE_WORKER_* keys (with the likely intended one); exits 2 listing every problem.",
    )

    for name, text in (
        ("publish", "point hostnames at a stored snapshot (environments, tags, custom domains)"),
        ("rollback", "point hostnames back at an older stored snapshot (same as publish)"),
    ):
        cmd = sub.add_parser(
            name, help=text,
            description=text + ". Writes the worker's KV directly (" + CONFIGURATION + "); running "
            "workers pick the change up within ZE_WORKER_INVALIDATION_POLL_MS. "
            "Prints one JSON line with the hostnames' previous snapshots.",
        )
        cmd.add_argument(
            "--host", action="append", required=True, metavar="HOST",
            help="hostname or URL to point (repeatable)",
        )
        cmd.add_argument("--snapshot", required=True, metavar="SNAPSHOT_ID", help="a stored snapshot id")
        cmd.add_argument(
            "--force", action="store_true",
            help="also move hostnames that currently serve another application",
        )
        _add_data_dir(cmd)

    ver = sub.add_parser(
        "versions", help="list an application's snapshots, newest first, with their hostnames",
        description="List an application's stored snapshots, newest first: snapshot id, version, "
        "creation time, asset count and the hostnames serving each (the --snapshot of publish and "
        "rollback). Reads the worker's KV directly (" + CONFIGURATION + "). Exits 1 when the "
        "application has no snapshots there.",
    )
    ver.add_argument("--app", required=True, metavar="APPLICATION_UID", help="the application (app.repo.org)")
    ver.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_data_dir(ver)

    rep = sub.add_parser(
        "replicate", help="catch another region up, or show this region's replication state",
        description="--resync URL compares every application of this region (configuration as for "
        "`serve`) with the region at URL and sends the files, snapshots and hostnames it lacks, signed "
        "with ZE_WORKER_JWT_SECRET as ZE_WORKER_REPLICA_NAME (or 'resync'). Progress on stderr, a JSON "
        "summary on stdout; exit 0 when everything was sent, 1 when errors remain, 2 for bad "
        "configuration. --status prints the /replicationz document read from this region's KV. "
        "--forget URL drops the queue this region keeps for a region taken out of ZE_WORKER_REPLICAS_URLS.",
    )
    what = rep.add_mutually_exclusive_group(required=True)
    what.add_argument("--resync", metavar="URL", help="the other region's URL (its load balancer)")
    what.add_argument("--status", action="store_true", help="print this region's replication state as JSON")
    what.add_argument("--forget", metavar="URL",
                      help="drop the queue kept for a region taken out of ZE_WORKER_REPLICAS_URLS")
    _add_data_dir(rep)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``zephyr-edge`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    if args.command == "serve":
        code = commands.serve(environ)
    elif args.command == "dev":
        code = commands.dev(environ, port=args.port, app_uid=args.app)
    elif args.command == "token":
        code = commands.token(environ, args.app, args.ttl, args.data_dir)
    elif args.command in ("publish", "rollback"):
        code = commands.publish(environ, args.host, args.snapshot, force=args.force, action=args.command,
                                data_dir=args.data_dir)
    elif args.command == "versions":
        code = commands.versions(environ, args.app, as_json=args.json, data_dir=args.data_dir)
    elif args.command == "replicate":
        code = commands.replicate(environ, resync=args.resync, status=args.status, forget=args.forget,
                                  data_dir=args.data_dir)
    else:
        code = commands.show_config(environ)
    sys.exit(code)

