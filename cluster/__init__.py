"""A cluster of hosts on this one machine, to run the service as a deployment does and take hosts away.

Each host is a Linux network namespace (cluster/network.py) running the real servers (cluster/servers.py):
HAProxy in front of the API hosts, the RabbitMQ nodes and the PostgreSQL primary; a RabbitMQ cluster of three;
PostgreSQL with a synchronous standby, failed over by Patroni through etcd; Redis; two API hosts (``just
serve``) and two hosts each with a consumer and a Celery worker. ``uv run just cluster <command>``
(cluster/__main__.py) builds it, shows it, kills, partitions and brings back its hosts, deploys the service
on it and removes it. It needs root and iproute2; the servers come from the distribution's packages.
"""
