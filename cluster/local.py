"""The local cluster: its hosts, and what can be done to them (start, kill, cut, heal, deploy, remove)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster import network
from cluster.network import Cut, Host, Network
from cluster.servers import (
    NO_DOTENV,
    PATRONI_PORT,
    ROOT,
    SERVERS,
    LoadBalancer,
    PostgreSQL,
    RabbitMQ,
    http_json,
    in_namespace,
    uv,
    wait_until,
)

DEFAULT_NETWORK = Network()
DEFAULT_DIRECTORY = Path(os.environ.get("CLUSTER_DIR", "/var/tmp/orders-cluster"))
HOSTS = (
    ("lb", "load-balancer", 2),
    ("etcd", "etcd", 3),
    ("redis", "redis", 4),
    ("db-1", "postgresql", 11),
    ("db-2", "postgresql", 12),
    ("mq-1", "rabbitmq", 21),
    ("mq-2", "rabbitmq", 22),
    ("mq-3", "rabbitmq", 23),
    ("api-1", "api", 31),
    ("api-2", "api", 32),
    ("proc-1", "processing", 41),
    ("proc-2", "processing", 42),
)
"""Each host's name, role, and the last byte of its address."""
DATABASE = "orders"
SERVICES = {"postgresql": 5432, "rabbitmq": 5672, "redis": 6379}
"""What a host can be cut from alone: the service's hosts, and its port on the load balancer."""
FIRST_ROLES = {"etcd", "redis", "postgresql"}
"""Started side by side with the RabbitMQ nodes, before the load balancer and the service's roles."""
STOP_GRACE_SECONDS = 40
"""How long a stopping API host may take: granian's 30 s drain, then the workers' shutdown."""


class LocalCluster:
    def __init__(self, network: Network = DEFAULT_NETWORK, directory: Path = DEFAULT_DIRECTORY) -> None:
        self.network = network
        self.directory = directory
        self.hosts = tuple(network.host(*host) for host in HOSTS)

    # -- the layout, as the servers see it

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r}: the hosts are {', '.join(h.name for h in self.hosts)}")

    def role_hosts(self, role: str) -> list[Host]:
        return [host for host in self.hosts if host.role == role]

    @property
    def load_balancer(self) -> Host:
        return self.role_hosts("load-balancer")[0]

    @property
    def url(self) -> str:
        return f"http://{self.load_balancer.address}"

    def role_environment(self) -> dict[str, str]:
        """The settings of the service's roles on this cluster: every client reaches PostgreSQL (its primary)
        and RabbitMQ through the load balancer, Redis directly."""
        balancer, redis = self.load_balancer.address, self.role_hosts("redis")[0].address
        return {
            "APP_ENV": "production",
            "DATABASE_URL": f"postgresql+asyncpg://postgres@{balancer}:5432/{DATABASE}",
            "DATABASE_POOL_SIZE": "10",
            "REDIS_URL": f"redis://{redis}:6379/0",
            # A host that dies without closing its connections is noticed by RabbitMQ after two missed
            # heartbeats, which hands its unacknowledged events and tasks to the others: within about 10 s.
            "AMQP_URL": f"amqp://orders:orders@{balancer}:5672/?heartbeat=5",
            "JWT_SECRET": self._jwt_secret(),
            "TRUSTED_PROXIES": balancer,
            # One client address (the machine's, through the load balancer) drives the tests' whole load.
            "RATE_LIMIT": "100000/minute",
            "AUTH_RATE_LIMIT": "100000/minute",
            "WORKERS": "2",
            "WORKER_CONCURRENCY": "2",
            "LOG_FORMAT": "json",
        }

    def _jwt_secret(self) -> str:
        path = self.directory / "jwt_secret"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

    # -- building and removing it

    def up(self) -> None:
        """Every host, its servers started in the order they need each other; returns once all are up."""
        network.create_bridge(self.network)
        for host in self.hosts:
            network.create_host(self.network, host, self.hosts)
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            rabbitmq = pool.submit(self._start_rabbitmq_nodes)
            _all(pool, self._start_and_wait, [h.name for h in self.hosts if h.role in FIRST_ROLES])
            rabbitmq.result()
        self._start_and_wait("lb")
        self.wait_for_replication()
        self.migrate()
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            _all(pool, self._start_and_wait, [h.name for h in self.hosts if h.role in {"api", "processing"}])

    def _start_rabbitmq_nodes(self) -> None:
        for node in self.role_hosts("rabbitmq"):  # one after the other: each joins the first
            self._start_and_wait(node.name)

    def down(self) -> None:
        """Kill every process of every host, remove the hosts, the bridge and the data: the machine as it
        was, which it checks."""
        for host in self.hosts:
            network.remove_host(host)
        network.remove_bridge(self.network)
        shutil.rmtree(self.directory, ignore_errors=True)
        left = [host.netns for host in self.hosts if network.exists(host)]
        left += [self.network.bridge] if network.bridge_exists(self.network) else []
        if left:
            raise RuntimeError(f"cluster down left {', '.join(left)} behind")

    # -- faults

    def kill(self, name: str) -> None:
        """A power cut: every process of the host SIGKILLed, its link down."""
        host = self.host(name)
        network.set_link(host, up=False)
        network.kill_all(host)

    def start(self, name: str) -> None:
        """Bring a host back: its link up, its servers started; returns once they are up."""
        host = self.host(name)
        network.set_link(host, up=True)
        self._start_and_wait(name)

    def partition(self, name: str, peers: Iterable[str] = ()) -> None:
        """Cut the host's network (its processes run on), or only its traffic with ``peers``: hosts, or the
        services ``postgresql``, ``rabbitmq`` and ``redis`` (their hosts, and their port on the load
        balancer)."""
        host = self.host(name)
        if not peers:
            network.set_link(host, up=False)
            return
        for peer in peers:
            for cut in self._cuts(host, peer):
                network.cut(cut)

    def heal(self, name: str) -> None:
        host = self.host(name)
        network.heal(host, self.hosts)
        network.set_link(host, up=True)

    def _cuts(self, host: Host, peer: str) -> list[Cut]:
        if peer not in SERVICES:
            return [Cut(host, self.host(peer))]
        servers = [Cut(host, server) for server in self.role_hosts(peer)]  # roles named as their services
        if peer == "redis":  # reached directly, not through the load balancer
            return servers
        return [*servers, Cut(host, self.load_balancer, SERVICES[peer])]

    # -- what it is now

    def status(self) -> dict[str, Any]:
        """The load balancer's URL, every host and its state, the current primary, and the roles' settings."""
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            hosts = list(pool.map(self._host_status, self.hosts))
        primary = self.primary()
        settings = {key: value for key, value in self.role_environment().items() if key != "JWT_SECRET"}
        return {
            "url": self.url,
            "hosts": hosts,
            "primary": primary.name if primary else None,
            "primary_dsn": self.dsn(primary) if primary else None,
            "settings": settings,
        }

    def _host_status(self, host: Host) -> dict[str, Any]:
        described: dict[str, Any] = {"name": host.name, "role": host.role, "address": host.address}
        described["state"] = self.state(host)
        if host.role == "postgresql":
            described["replication"] = PostgreSQL().member(host)
        if cut_from := network.cut_off(host) if network.exists(host) else []:
            described["cut_from"] = cut_from
        return described

    def state(self, host: Host) -> str:
        """``absent``, ``down`` (nothing runs), ``partitioned`` (its link is down, or it is cut from some
        peer), ``up``, or ``failing`` (running, but its check fails: starting, or a dependency away)."""
        if not network.exists(host):
            return "absent"
        if not network.pids(host):
            return "down"
        if not network.link_up(host) or network.cut_off(host):
            return "partitioned"
        return "up" if SERVERS[host.role].up(self, host) else "failing"

    def primary(self) -> Host | None:
        """The PostgreSQL host Patroni calls the primary, if one is."""
        for host in self.role_hosts("postgresql"):
            if network.exists(host) and PostgreSQL().member(host) == "primary":
                return host
        return None

    def dsn(self, host: Host) -> str:
        return f"postgresql://postgres@{host.address}:5432/{DATABASE}"

    def wait_for_replication(self, timeout: float = 120) -> None:
        """Until one PostgreSQL host is the primary and the other its synchronous standby."""

        def synchronous() -> bool:
            primary = self.primary()
            if primary is None:
                return False
            status, body = http_json(f"http://{primary.address}:{PATRONI_PORT}/cluster")
            roles = sorted(str(member.get("role")) for member in body.get("members", [])) if status else []
            return roles == ["leader", "sync_standby"]

        wait_until(synchronous, "a PostgreSQL primary with a synchronous standby", timeout)

    def rabbitmq(self, *args: str) -> str:
        """``rabbitmqctl`` on the first RabbitMQ node that is up."""
        for node in self.role_hosts("rabbitmq"):
            if self.state(node) == "up":
                return RabbitMQ().ctl(self, node, *args)
        raise RuntimeError("no RabbitMQ node is up")

    # -- deploying the service

    def migrate(self) -> None:
        """Create the database on the primary if it is missing, then ``just migrate`` through the load
        balancer, as a deployment would."""
        primary = self.primary()
        if primary is None:
            raise RuntimeError("no PostgreSQL primary")
        exists = _psql(primary, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")  # noqa: S608
        if not exists.strip():
            _psql(primary, f"CREATE DATABASE {DATABASE}")
        env = {**os.environ, **self.role_environment()}
        subprocess.run(
            [uv(), "run", "--frozen", "just", *NO_DOTENV, "migrate"], cwd=ROOT, env=env, check=True
        )

    def deploy(self, log: Callable[[str], None] = print) -> None:
        """Migrate, then restart the API hosts one at a time: each is drained at the load balancer (no new
        request goes to it, those in flight finish), stopped with SIGTERM, started, and put back once
        ready."""
        self.migrate()
        for host in self.role_hosts("api"):
            self._redeploy(host, log)

    def _redeploy(self, host: Host, log: Callable[[str], None]) -> None:
        log(f"{host.name}: draining")
        self._balancer(f"set server api/{host.name} state drain")
        wait_until(lambda: self._sessions(host) == 0, f"{host.name} to finish its requests", 60)
        log(f"{host.name}: SIGTERM")
        self.stop_api(host.name)
        self._start_and_wait(host.name)
        self._balancer(f"set server api/{host.name} state ready")
        wait_until(lambda: self._server_status(host) == "UP", f"{host.name} to be back in", 30)
        log(f"{host.name}: back")

    def stop_api(self, name: str) -> None:
        """SIGTERM to granian's main process, as a container runtime sends it; returns once the host's
        processes have all ended."""
        host = self.host(name)
        # The interpreter running app.serve whose parent doesn't (uv's child, not one of its workers).
        serving = {
            process.pid: process.parent
            for process in network.processes(host)
            if Path(process.command[0]).name.startswith("python") and "app.serve" in process.command
        }
        for pid, parent in serving.items():
            if parent not in serving:
                os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not network.pids(host), f"{name} to stop", STOP_GRACE_SECONDS)

    def _balancer(self, command: str) -> str:
        return LoadBalancer().command(self, self.load_balancer, command)

    def balancer_stat(self, host: Host, backend: str = "api") -> dict[str, str]:
        """HAProxy's statistics of ``host`` as a server of ``backend`` (``show stat``: ``status``, ``scur``
        its requests in flight, ``lastchg`` and ``lastsess`` the seconds since its last change of status and
        since it was last sent a request...)."""
        lines = self._balancer("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") == host.name:
                return row
        raise KeyError(f"{host.name} is no server of {backend}")

    def _sessions(self, host: Host) -> int:
        return int(self.balancer_stat(host)["scur"] or 0)

    def _server_status(self, host: Host) -> str:
        return self.balancer_stat(host)["status"]

    def _start_and_wait(self, name: str) -> None:
        """Start the host's servers unless something runs there already; wait until they are up."""
        host = self.host(name)
        server = SERVERS[host.role]
        if not network.pids(host):
            server.start(self, host)
        timeout = 180 if host.role in {"api", "processing"} else 120
        wait_until(lambda: server.up(self, host), f"{name} ({host.role}) to be up", timeout)


def _all(pool: ThreadPoolExecutor, work: Callable[[Any], None], items: list[Any]) -> None:
    """Run ``work`` on every item side by side; raise the first error once all ended."""
    for future in [pool.submit(work, item) for item in items]:
        future.result()


def _psql(host: Host, sql: str) -> str:
    return in_namespace(host, ["psql", "-h", host.address, "-U", "postgres", "-tAc", sql], user="postgres")
