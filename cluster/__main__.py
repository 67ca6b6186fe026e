"""``python -m cluster`` (``just cluster``): the local cluster's command line; see cluster/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cluster.local import LocalCluster


def main(argv: list[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("cluster: network namespaces need root")
    cluster = LocalCluster()
    command = arguments.command
    if command == "up":
        cluster.up()
        print(f"cluster up: {cluster.url}")
    elif command == "down":
        cluster.down()
    elif command == "status":
        _print_status(cluster, as_json=arguments.json)
    elif command == "deploy":
        cluster.deploy()
    elif command == "partition":
        cluster.partition(arguments.name, arguments.peers)
    else:
        getattr(cluster, command)(arguments.name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="just cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build the hosts and start every server; returns once all are up")
    commands.add_parser("down", help="stop everything and remove the hosts and their data")
    status = commands.add_parser("status", help="every host's state, the primary, the roles' settings")
    status.add_argument("--json", action="store_true", help="one JSON document")
    commands.add_parser("deploy", help="migrate, then restart the API hosts one at a time")
    for name, text in (
        ("kill", "a power cut: every process SIGKILLed, the link down"),
        ("start", "bring a host back: link up, servers started"),
        ("heal", "undo partition"),
    ):
        commands.add_parser(name, help=text).add_argument("name")
    partition = commands.add_parser("partition", help="cut a host's network (its processes run on)")
    partition.add_argument("name")
    partition.add_argument(
        "peers",
        nargs="*",
        help="cut only these: hosts, or postgresql, rabbitmq, redis (their hosts and load-balancer port)",
    )
    return parser


def _print_status(cluster: LocalCluster, *, as_json: bool) -> None:
    status = cluster.status()
    if as_json:
        json.dump(status, sys.stdout, indent=2)
        print()
        return
    print(f"load balancer: {status['url']}   primary: {status['primary'] or '-'}")
    for host in status["hosts"]:
        extra = host.get("replication") or ", ".join(host.get("cut_from", []))
        print(f"  {host['name']:<8} {host['role']:<14} {host['address']:<12} {host['state']:<12} {extra}")
    print(f"the roles' settings (and JWT_SECRET, in {cluster.directory / 'jwt_secret'}):")
    for name, value in status["settings"].items():
        print(f"  {name}={value}")


if __name__ == "__main__":
    main()
