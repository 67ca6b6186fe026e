"""Hosts as Linux network namespaces on one bridge: their links, their processes, and cuts between them.

Each host is a namespace ``<prefix>-<name>`` with one veth pair: ``eth0`` inside, its twin on the bridge in
the root namespace, which has the bridge's address and so reaches every host. ``ip netns exec`` bind-mounts
``/etc/netns/<namespace>/hosts`` over ``/etc/hosts``, so that every host resolves the others by name without
touching the machine's own file. Only iproute2 is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

NETNS_DIR = Path("/etc/netns")


@dataclass(frozen=True)
class Network:
    """One bridge and the /24 of its hosts; ``prefix`` names everything it creates on the machine, so that
    two networks (a developer's and the tests') never meet."""

    prefix: str = "orders"
    subnet: str = "10.213.0"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def host(self, name: str, role: str, number: int) -> Host:
        """The host whose address ends in ``number``."""
        # The root namespace's end of its link: at most 15 characters, as Linux allows.
        return Host(
            name, role, f"{self.subnet}.{number}", f"{self.prefix}-{name}", f"{self.prefix}-v{number}"
        )


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    address: str
    netns: str
    veth: str


@dataclass(frozen=True)
class Cut:
    """Traffic dropped between two hosts, or only what goes to ``port`` on ``server``."""

    client: Host
    server: Host
    port: int | None = None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def exists(host: Host) -> bool:
    return Path("/run/netns", host.netns).exists()


def bridge_exists(network: Network) -> bool:
    return ip("link", "show", network.bridge, check=False).returncode == 0


def create_bridge(network: Network) -> None:
    if not bridge_exists(network):
        ip("link", "add", network.bridge, "type", "bridge")
        ip("addr", "add", f"{network.bridge_address}/24", "dev", network.bridge)
    ip("link", "set", network.bridge, "up")


def create_host(network: Network, host: Host, everyone: Iterable[Host]) -> None:
    """The namespace, its link on the bridge (up) and its hosts file naming every host."""
    if not exists(host):
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", host.veth, "master", network.bridge, "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "lo", "up")
    directory = NETNS_DIR / host.netns
    directory.mkdir(parents=True, exist_ok=True)
    names = "".join(f"{other.address} {other.name}\n" for other in everyone)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
    set_link(host, up=True)


def set_link(host: Host, *, up: bool) -> None:
    ip("-n", host.netns, "link", "set", "eth0", "up" if up else "down")


def link_up(host: Host) -> bool:
    shown = json.loads(ip("-j", "-n", host.netns, "link", "show", "eth0").stdout)
    return "UP" in shown[0]["flags"]


def pids(host: Host) -> list[int]:
    """The processes running in the host's namespace."""
    listed = ip("netns", "pids", host.netns, check=False).stdout
    return [int(pid) for pid in listed.split()]


class Process(NamedTuple):
    pid: int
    parent: int
    command: list[str]


def processes(host: Host) -> list[Process]:
    """Each process of the host, with its parent and its command line."""
    found = []
    for pid in pids(host):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError):
            continue  # it ended meanwhile
        found.append(Process(pid, parent, command))
    return found


def kill_all(host: Host, sig: signal.Signals = signal.SIGKILL, within: float = 10.0) -> None:
    """Send ``sig`` to every process of the host until none is left (a process may fork meanwhile)."""
    deadline = time.monotonic() + within
    while running := pids(host):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name}: processes {running} outlived {sig.name}")
        for pid in running:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, sig)
        time.sleep(0.1)


def remove_host(host: Host) -> None:
    """Kill what runs there, then remove the namespace, its link and its hosts file."""
    if exists(host):
        kill_all(host)
        ip("link", "del", host.veth, check=False)  # removes both ends
        ip("netns", "del", host.netns, check=False)
    hosts = NETNS_DIR / host.netns / "hosts"
    hosts.unlink(missing_ok=True)
    if hosts.parent.exists():
        hosts.parent.rmdir()


def remove_bridge(network: Network) -> None:
    ip("link", "del", network.bridge, check=False)


def cut(between: Cut) -> None:
    """Drop the traffic both ways: a blackhole rule in each namespace, for the other's address (and the
    port, on the side that connects to it, or replies from it)."""
    for netns, selectors in _rules(between):
        ip("-n", netns, "rule", "add", *selectors, "blackhole")


def heal(host: Host, everyone: Sequence[Host]) -> None:
    """Remove every cut that involves ``host``, from its side and from the others'."""
    for other in everyone:
        if not exists(other):
            continue
        for rule in _blackholes(other):
            if other == host or rule.get("dst") == host.address:
                ip("-n", other.netns, "rule", "del", "priority", str(rule["priority"]), check=False)


def cut_off(host: Host) -> list[str]:
    """The addresses (and ports) ``host`` is cut from."""
    return [
        f"{rule['dst']}:{rule['dport']}" if "dport" in rule else str(rule["dst"])
        for rule in _blackholes(host)
        if "sport" not in rule
    ]


def _rules(between: Cut) -> list[tuple[str, list[str]]]:
    """Each side's namespace and the selectors of its rule."""
    client, server, port = between.client, between.server, between.port
    outward, inward = ["to", f"{server.address}/32"], ["to", f"{client.address}/32"]
    if port is not None:
        outward += ["ipproto", "tcp", "dport", str(port)]
        inward += ["ipproto", "tcp", "sport", str(port)]
    return [(client.netns, outward), (server.netns, inward)]


def _blackholes(host: Host) -> list[dict[str, object]]:
    shown = json.loads(ip("-j", "-n", host.netns, "rule", "show").stdout or "[]")
    return [rule for rule in shown if rule.get("action") == "blackhole"]
