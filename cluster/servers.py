"""What runs on each kind of host: how it is configured, started in its namespace, and asked whether it is up.

Every server is the distribution's (HAProxy, etcd, Patroni with PostgreSQL, RabbitMQ, Redis) or one of the
service's roles, started by its ``just`` recipe as a person would. Each logs to ``<dir>/<host>/<name>.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Protocol

from cluster.network import Host, Network, processes

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_HOME = "/var/lib/rabbitmq"  # its .erlang.cookie, shared by the nodes, lets them form one cluster
API_PORT = 8000
PATRONI_PORT = 8008


class Layout(Protocol):
    """What a server needs to know of its cluster."""

    directory: Path
    network: Network

    def role_hosts(self, role: str) -> list[Host]: ...

    def role_environment(self) -> dict[str, str]: ...


class Server(Protocol):
    def start(self, layout: Layout, host: Host) -> None: ...

    def up(self, layout: Layout, host: Host) -> bool: ...


def spawn(
    host: Host,
    argv: list[str],
    log: Path,
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start ``argv`` in the host's namespace, in a session of its own, so it outlives the command that
    started it; ``cluster kill`` finds it by its namespace."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **(env or {})}
    with log.open("ab") as output:
        subprocess.Popen(
            _on(host, user, argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=ROOT,
            start_new_session=True,
        )


def in_namespace(host: Host, argv: list[str], *, user: str | None = None, timeout: float = 60) -> str:
    """Run ``argv`` in the host's namespace and return what it printed; raise if it fails."""
    done = subprocess.run(
        _on(host, user, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{host.name}: {' '.join(argv)} failed: {done.stderr or done.stdout}")
    return done.stdout


def _on(host: Host, user: str | None, argv: list[str]) -> list[str]:
    """``argv`` run in the host's namespace, as ``user`` if given."""
    as_user = ["runuser", "-u", user, "--"] if user else []
    return ["ip", "netns", "exec", host.netns, *as_user, *argv]


def render(template: str, destination: Path, **values: object) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    destination.write_text(text)


def host_directory(layout: Layout, host: Host, owner: str | None = None) -> Path:
    directory = layout.directory / host.name
    directory.mkdir(parents=True, exist_ok=True)
    if owner:
        shutil.chown(directory, owner, owner)
    return directory


def answers(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_json(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """The status and JSON body of a GET (status 0 when nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http to our hosts
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, None


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@dataclass(frozen=True)
class Etcd:
    """The store Patroni keeps the leader key in (one member: the cluster's tests never kill it)."""

    def start(self, layout: Layout, host: Host) -> None:
        directory = host_directory(layout, host)
        peer, client = f"http://{host.address}:2380", f"http://{host.address}:2379"
        argv = ["etcd", "--name", host.name, "--data-dir", str(directory / "data")]
        argv += ["--listen-client-urls", client, "--advertise-client-urls", client]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"{host.name}={peer}"]
        spawn(host, argv, directory / "etcd.log")

    def up(self, layout: Layout, host: Host) -> bool:
        status, body = http_json(f"http://{host.address}:2379/health")
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"


@dataclass(frozen=True)
class Redis:
    def start(self, layout: Layout, host: Host) -> None:
        directory = host_directory(layout, host, owner="redis")
        argv = ["redis-server", "--bind", host.address, "--port", "6379", "--protected-mode", "no"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
        spawn(host, argv, directory / "redis.log", user="redis")

    def up(self, layout: Layout, host: Host) -> bool:
        try:
            with socket.create_connection((host.address, 6379), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@dataclass(frozen=True)
class RabbitMQ:
    """A node of one RabbitMQ cluster; the first node of the role is the one the others join."""

    def start(self, layout: Layout, host: Host) -> None:
        directory = host_directory(layout, host, owner="rabbitmq")
        fresh = not (directory / "mnesia").exists()
        render("rabbitmq-env.conf", directory / "rabbitmq-env.conf", name=host.name, directory=directory)
        render("rabbitmq.conf", directory / "rabbitmq.conf")
        (directory / "enabled_plugins").write_text("[].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(directory)], check=True)
        argv = ["env", *self._env(directory), str(RABBITMQ_BIN / "rabbitmq-server")]
        spawn(host, argv, directory / "rabbitmq.log", user="rabbitmq")
        # Until the node wrote its pid file and started (await_startup fails while the node is not yet known).
        self.ctl(layout, host, "wait", str(directory / "rabbitmq.pid"), "--timeout", "90")
        first = layout.role_hosts("rabbitmq")[0]
        if fresh and host != first:
            self.ctl(layout, host, "stop_app")
            self.ctl(layout, host, "join_cluster", f"rabbit@{first.name}")
            self.ctl(layout, host, "start_app")

    def up(self, layout: Layout, host: Host) -> bool:
        return answers(host.address, 5672)

    def ctl(self, layout: Layout, host: Host, *args: str) -> str:
        """``rabbitmqctl`` against the node, run on its host."""
        directory = layout.directory / host.name
        argv = ["env", *self._env(directory), str(RABBITMQ_BIN / "rabbitmqctl"), "-n", f"rabbit@{host.name}"]
        return in_namespace(host, [*argv, *args], user="rabbitmq", timeout=90)

    def _env(self, directory: Path) -> list[str]:
        return [f"HOME={RABBITMQ_HOME}", f"RABBITMQ_CONF_ENV_FILE={directory / 'rabbitmq-env.conf'}"]


@dataclass(frozen=True)
class PostgreSQL:
    """PostgreSQL run by Patroni, which elects the primary through etcd and fails over on its own."""

    def start(self, layout: Layout, host: Host) -> None:
        directory = host_directory(layout, host, owner="postgres")
        render(
            "patroni.yml",
            directory / "patroni.yml",
            name=host.name,
            address=host.address,
            etcd=layout.role_hosts("etcd")[0].address,
            subnet=layout.network.cidr,
            directory=directory,
            bin_dir=POSTGRESQL_BIN,
        )
        shutil.chown(directory / "patroni.yml", "postgres", "postgres")
        env = {"HOME": str(directory)}
        spawn(
            host,
            ["patroni", str(directory / "patroni.yml")],
            directory / "patroni.log",
            user="postgres",
            env=env,
        )

    def up(self, layout: Layout, host: Host) -> bool:
        """PostgreSQL runs there (as primary or standby), as Patroni reports it."""
        return http_json(f"http://{host.address}:{PATRONI_PORT}/health")[0] == 200

    def member(self, host: Host) -> str | None:
        """The host's part in the replication, ``primary``, ``sync standby`` or ``standby``, as Patroni
        reports it; None if Patroni doesn't answer."""
        status, body = http_json(f"http://{host.address}:{PATRONI_PORT}/patroni")
        if not status or not isinstance(body, dict):
            return None
        if body.get("role") in {"master", "primary"}:  # Patroni 3.0 still says master
            return "primary"
        return "sync standby" if body.get("sync_standby") else "standby"


@dataclass(frozen=True)
class LoadBalancer:
    def start(self, layout: Layout, host: Host) -> None:
        directory = host_directory(layout, host)
        render(
            "haproxy.cfg",
            directory / "haproxy.cfg",
            directory=directory,
            address=host.address,
            api_servers=_servers(layout.role_hosts("api"), API_PORT),
            api_fallbacks=_fallbacks(layout.role_hosts("api"), API_PORT),
            amqp_servers=_servers(layout.role_hosts("rabbitmq"), 5672),
            postgresql_servers=_servers(layout.role_hosts("postgresql"), 5432, f" port {PATRONI_PORT}"),
        )
        argv = ["haproxy", "-W", "-db", "-f", str(directory / "haproxy.cfg")]
        spawn(host, argv, directory / "haproxy.log")

    def up(self, layout: Layout, host: Host) -> bool:
        """HAProxy answers on its admin socket."""
        try:
            return "Name: HAProxy" in self.command(layout, host, "show info")
        except OSError:
            return False

    def command(self, layout: Layout, host: Host, command: str) -> str:
        """A command to HAProxy's admin socket; its answer."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(5)
            connection.connect(str(layout.directory / host.name / "haproxy.sock"))
            connection.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        return answer.decode()


def _servers(hosts: list[Host], port: int, check: str = "") -> str:
    return "\n".join(f"    server {host.name} {host.address}:{port} check{check}" for host in hosts)


def _fallbacks(hosts: list[Host], port: int) -> str:
    return "\n".join(f"    server {host.name}-fallback {host.address}:{port} backup" for host in hosts)


NO_DOTENV = ("--dotenv-path", "/dev/null")
"""just's options that keep a developer's .env (which names the machine's own services) from the hosts: they
get the cluster's settings alone."""
START_MARK = "== started by cluster"
"""Written to a role's log before each start: what the role logs after the last mark is this run's."""


@dataclass(frozen=True)
class Recipe:
    """One of the service's processes, started by its recipe (``uv run just <recipe> <args>``)."""

    name: str
    args: tuple[str, ...] = ()
    started: str = ""
    """What it logs once it is up."""

    def start(self, layout: Layout, host: Host) -> None:
        log = self.log(layout, host)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as output:
            output.write(f"{START_MARK} {time.strftime('%H:%M:%S')}\n")
        args = [arg.format(host=host.name) for arg in self.args]
        argv = [uv(), "run", "--frozen", "just", *NO_DOTENV, self.name, *args]
        spawn(host, argv, log, env={"HOME": os.environ.get("HOME", "/root"), **layout.role_environment()})

    def log(self, layout: Layout, host: Host) -> Path:
        return layout.directory / host.name / f"{self.name}.log"

    def started_since_last_start(self, layout: Layout, host: Host) -> bool:
        log = self.log(layout, host)
        if not log.exists():
            return False
        text = log.read_text(errors="replace")
        return self.started in text[text.rfind(START_MARK) :]


SERVE = Recipe("serve")
CONSUMER = Recipe("consumer", started='"consuming"')
# Celery names a worker after its host, and the hosts here share one hostname: each gets its own.
WORKER = Recipe("worker", ("-n", "worker@{host}"), started="ready.")


@dataclass(frozen=True)
class Api:
    """``just serve``: granian, ``WORKERS`` processes; up once its readiness passes."""

    def start(self, layout: Layout, host: Host) -> None:
        SERVE.start(layout, host)

    def up(self, layout: Layout, host: Host) -> bool:
        return http_json(f"http://{host.address}:{API_PORT}/health/ready")[0] == 200


@dataclass(frozen=True)
class Processing:
    """A consumer and a Celery worker, side by side; up once both said so since their last start."""

    def start(self, layout: Layout, host: Host) -> None:
        CONSUMER.start(layout, host)
        WORKER.start(layout, host)

    def up(self, layout: Layout, host: Host) -> bool:
        running = " ".join(" ".join(process.command) for process in processes(host))
        return (
            "app.consumer" in running
            and "celery" in running
            and all(recipe.started_since_last_start(layout, host) for recipe in (CONSUMER, WORKER))
        )


def uv() -> str:
    """The uv that runs this process (``uv run`` says which in ``UV``), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not on PATH")
    return found


SERVERS: dict[str, Server] = {
    "load-balancer": LoadBalancer(),
    "etcd": Etcd(),
    "redis": Redis(),
    "rabbitmq": RabbitMQ(),
    "postgresql": PostgreSQL(),
    "api": Api(),
    "processing": Processing(),
}
