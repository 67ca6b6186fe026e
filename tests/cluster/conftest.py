"""One local cluster (cluster/) for the fault tests, built once, given back whole to each test, and removed.

It is a cluster of its own (namespaces ``ordtest-*`` on 10.214.0.0/24, data in /var/tmp/ordtest-cluster), so a
developer's ``just cluster up`` is left alone. It needs root, iproute2 and the servers from the distribution's
packages; without them the tests are skipped, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.local import LocalCluster
from cluster.network import Network
from cluster.servers import POSTGRESQL_BIN, RABBITMQ_BIN, answers
from tests.cluster.checks import REPORTED

LOGS = Path("/tmp/ordtest-cluster-logs")
MACHINE_SERVICES = (5432, 6379, 5672)
"""The machine's own PostgreSQL, Redis and RabbitMQ, which the cluster never touches."""
NEEDED = ("ip", "haproxy", "patroni", "etcd", "redis-server", "psql", "runuser")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the cluster tests need root (network namespaces)"
    absent = [name for name in NEEDED if shutil.which(name) is None]
    absent += [
        str(path)
        for path in (POSTGRESQL_BIN / "postgres", RABBITMQ_BIN / "rabbitmq-server")
        if not path.exists()
    ]
    if absent:
        return f"the cluster tests need {', '.join(absent)} (apt-get install haproxy patroni etcd-server ...)"
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the cluster tests, but {reason}")
        pytest.skip(reason)
    local = LocalCluster(Network("ordtest", "10.214.0"), Path("/var/tmp/ordtest-cluster"))
    local.down()  # whatever a run that was killed left behind
    try:
        local.up()
        yield local
    finally:
        keep_logs(local.directory, LOGS)
        local.down()
        untouched = [port for port in MACHINE_SERVICES if not answers("127.0.0.1", port)]
        assert not untouched, f"the machine's own services stopped answering on {untouched}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTED:
        terminalreporter.section("cluster faults")
        for line in REPORTED:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"every host's logs: {LOGS}")


def keep_logs(directory: Path, destination: Path) -> None:
    """Copy every host's logs out of the cluster's directory, which ``down`` removes."""
    shutil.rmtree(destination, ignore_errors=True)
    for log in directory.glob("*/*.log"):
        (destination / log.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(log, destination / log.parent.name / log.name)


@pytest.fixture
def whole(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster with every host up; whatever the test took away is brought back after it."""
    _restore(cluster)
    yield cluster
    _restore(cluster)


def _restore(cluster: LocalCluster) -> None:
    for host in cluster.hosts:
        if cluster.state(host) != "up":
            cluster.heal(host.name)
            cluster.start(host.name)
    cluster.wait_for_replication()
