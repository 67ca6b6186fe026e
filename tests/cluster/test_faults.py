"""Hosts taken away one at a time under a steady load through the load balancer: what clients see, and that
no order is lost or processed twice (tests/cluster/checks.py).

Each test prints its figures: the requests by outcome, lost and twice (0), and how long the service took to
answer a create with 201 again after the fault.
"""

from __future__ import annotations

import json
import time
from typing import Any

from cluster.local import LocalCluster
from cluster.servers import wait_until
from tests.cluster.checks import REPORTED, check_nothing_lost, dead_letters, orders_of, processing_lag
from tests.cluster.load import Figures, SteadyLoad

STEADY_SECONDS = 5.0
"""Load before the fault, and after the cluster is whole again."""
HEALTH_CHECK_SECONDS = 4
"""How long HAProxy takes at most to find a host dead: two checks (``fall 2``) a second apart, each given up
after a second (``timeout check``); see cluster/templates/haproxy.cfg."""


def report(name: str, figures: Figures, checked: dict[str, int], fault: float, **measured: object) -> None:
    """Keep the fault's figures for the end of the run (tests/cluster/conftest.py prints them), with the
    seconds from the fault (``time.monotonic()``) to the first 201 answered to a create sent after it."""
    measured = {
        key: round(value, 1) if isinstance(value, float) else value for key, value in measured.items()
    }
    first = {"first_201_after_s": figures.first_created_after(fault)}
    REPORTED.append(f"{name}: {json.dumps({'requests': figures.statuses(), **checked, **first, **measured})}")


def test_killing_an_api_host_fails_only_its_requests_in_flight(whole: LocalCluster) -> None:
    dead_before = dead_letters(whole)
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        killed, in_flight = time.monotonic(), load.in_flight
        whole.kill("api-1")
        time.sleep(10)
        stat = whole.balancer_stat(whole.host("api-1"))
        now = time.monotonic()
        whole.start("api-1")
        time.sleep(STEADY_SECONDS)
    figures = load.figures
    checked = check_nothing_lost(whole, figures, dead_before)
    taken_out = now - int(stat["lastchg"]) - killed
    last_sent = now - int(stat["lastsess"]) - killed
    measured = {"in_flight": in_flight, "failed": figures.failed, "marked_down_after_s": taken_out}
    report("kill api-1", figures, checked, killed, **measured, last_sent_after_s=last_sent)
    assert stat["status"] == "DOWN"
    assert last_sent <= HEALTH_CHECK_SECONDS + 1, "the load balancer kept sending to the dead host"
    assert figures.failed <= in_flight, f"{figures.failed} requests failed, {in_flight} were in flight"
    assert figures.first_created_after(killed) is not None


SERVICE_QUEUES = ("orders.new_order", "orders.new_order.dead", "orders.process_orders")


def queues(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    listed = cluster.rabbitmq("list_queues", "name", "type", "leader", "members", "--formatter", "json", "-q")
    return {str(queue["name"]): queue for queue in json.loads(listed)}


def queue_leader(cluster: LocalCluster, queue: str = "orders.new_order") -> str:
    """The host of the RabbitMQ node that leads ``queue``."""
    return str(queues(cluster)[queue]["leader"]).removeprefix("rabbit@")


def test_every_queue_of_the_service_is_a_quorum_queue_on_every_node(whole: LocalCluster) -> None:
    declared = queues(whole)
    nodes = {f"rabbit@{host.name}" for host in whole.role_hosts("rabbitmq")}
    for name in SERVICE_QUEUES:
        assert declared[name]["type"] == "quorum", name
        assert set(declared[name]["members"]) == nodes, name


def test_killing_the_rabbitmq_node_that_leads_the_queue_then_another_loses_no_event(
    whole: LocalCluster,
) -> None:
    dead_before = dead_letters(whole)
    killed: list[tuple[str, float]] = []
    fault = 0.0
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        for _ in range(2):
            leader = queue_leader(whole)
            killed.append((leader, time.time()))
            fault = fault or time.monotonic()
            whole.kill(leader)
            time.sleep(15)  # publishers and consumers carry on through the other two nodes meanwhile
            whole.start(leader)
            time.sleep(STEADY_SECONDS)
    checked = check_nothing_lost(whole, load.figures, dead_before)
    orders = orders_of(whole, load.figures.users)
    lags = [processing_lag(orders, moment, moment + 15) for _, moment in killed]
    nodes = [node for node, _ in killed]
    report("kill the queue's leader twice", load.figures, checked, fault, killed=nodes, processing_lag_s=lags)
    assert killed[0][0] != killed[1][0]


def test_killing_a_consumer_and_worker_host_mid_batch_leaves_its_work_to_the_other(
    whole: LocalCluster,
) -> None:
    dead_before = dead_letters(whole)
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        started, fault = time.time(), time.monotonic()
        whole.kill("proc-1")
        time.sleep(30)  # the broker hands proc-1's unacknowledged events and tasks to proc-2
        whole.start("proc-1")
        time.sleep(STEADY_SECONDS)
    checked = check_nothing_lost(whole, load.figures, dead_before)
    lag = processing_lag(orders_of(whole, load.figures.users), started - 5, started + 30)
    report("kill proc-1", load.figures, checked, fault, processing_lag_s=lag)
    assert load.figures.failed == 0


def test_killing_the_postgresql_primary_promotes_the_standby_with_every_order(whole: LocalCluster) -> None:
    dead_before = dead_letters(whole)
    old = whole.primary()
    assert old is not None
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        killed = time.monotonic()
        whole.kill(old.name)
        wait_until(lambda: whole.primary() not in (None, old), "the standby to be promoted", 60)
        promoted = time.monotonic() - killed
        wait_until(lambda: load.figures.first_created_after(killed) is not None, "a create answered 201", 60)
        time.sleep(STEADY_SECONDS)
        whole.start(old.name)
        whole.wait_for_replication()
        time.sleep(STEADY_SECONDS)
    checked = check_nothing_lost(whole, load.figures, dead_before)
    report(f"kill the primary {old.name}", load.figures, checked, killed, promoted_after_s=promoted)
    assert whole.primary() != old


def test_an_api_host_cut_from_the_database_is_drained_and_no_client_sees_a_500(whole: LocalCluster) -> None:
    dead_before = dead_letters(whole)
    api = whole.host("api-1")
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        cut = time.monotonic()
        whole.partition(api.name, ["postgresql"])
        wait_until(lambda: whole.balancer_stat(api)["status"] == "DOWN", "api-1 to be taken out", 30)
        drained = time.monotonic() - cut
        time.sleep(STEADY_SECONDS)
        whole.heal(api.name)
        wait_until(lambda: whole.balancer_stat(api)["status"] == "UP", "api-1 to be back", 30)
        time.sleep(STEADY_SECONDS)
    checked = check_nothing_lost(whole, load.figures, dead_before)
    report("cut api-1 from PostgreSQL", load.figures, checked, cut, drained_after_s=drained)
    assert load.figures.failures() <= {"503"}, "a request failed otherwise than with a 503"
    assert drained <= HEALTH_CHECK_SECONDS + 2  # its readiness ping gives up after 2 s


def test_a_rolling_deploy_under_load_fails_no_request(whole: LocalCluster) -> None:
    dead_before = dead_letters(whole)
    with SteadyLoad(whole.url) as load:
        time.sleep(STEADY_SECONDS)
        started = time.monotonic()
        whole.deploy(log=lambda line: print(f"  deploy: {line}"))
        took = time.monotonic() - started
        time.sleep(STEADY_SECONDS)
    checked = check_nothing_lost(whole, load.figures, dead_before)
    report("rolling deploy", load.figures, checked, started, deploy_s=took)
    assert load.figures.failed == 0
