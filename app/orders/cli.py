"""``litestar events …``: look at the order events' backlog, and send dead-lettered ones round again."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import click
from litestar.plugins import CLIPluginProtocol

from app.config import Settings
from app.messaging.broker import BROKER_ERRORS, ReplayStopped, Topology, queue_depths, replay_dead_letters
from app.messaging.outbox import backlog
from app.orders.events import NEW_ORDER
from app.storage.db import sqlalchemy_config


class EventsCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        @cli.group(help="Order events: the outbox and the RabbitMQ queues.")
        def events() -> None: ...

        @events.command(help="Events waiting in the outbox, and messages in the queue and dead-letter queue.")
        def status() -> None:
            settings = Settings.from_env()
            waiting, age = asyncio.run(_backlog(settings.database_url))
            click.echo(f"outbox: {waiting} event(s) not published yet, the oldest waiting {age:.1f} s")
            if not settings.amqp_url:
                click.echo("no AMQP_URL: events are handled inside the API process")
                return
            try:
                depths = asyncio.run(queue_depths(settings.amqp_url, _topology(settings)))
            except BROKER_ERRORS as exc:  # what an operator looks at when things go wrong: say it plainly
                _fail(f"RabbitMQ did not answer: {exc}")
            for queue, messages in depths.items():
                click.echo(f"{queue}: {messages} message(s) ready")

        @events.command(
            help="Publish dead-lettered events again, oldest first: those in the dead-letter queue when it "
            "starts (or --limit of them); one that fails again waits there for the next replay."
        )
        @click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many.")
        def replay(limit: int | None) -> None:
            settings = Settings.from_env()
            if not settings.amqp_url:
                raise click.UsageError("AMQP_URL is not set: there is no dead-letter queue")
            topology = _topology(settings)
            try:
                replayed = asyncio.run(replay_dead_letters(settings.amqp_url, topology, limit))
            except ReplayStopped as exc:
                unreachable = isinstance(exc.__cause__, ConnectionError | OSError | TimeoutError)
                _fail(
                    f"RabbitMQ {'did not answer' if unreachable else 'refused'}: {exc}"
                    f" (replay stopped, {exc.replayed} event(s) moved back before)"
                )
            click.echo(
                f"{replayed} event(s) moved from {topology.dead_letter_queue} back to {topology.queue}"
            )


def _fail(reason: str) -> NoReturn:
    """End the command with status 1 and the reason on one line of stderr: no traceback, and not the box
    that rich-click draws around a ClickException, wrapped over several lines."""
    click.echo(f"Error: {reason}", err=True)
    raise click.exceptions.Exit(1)


async def _backlog(database_url: str) -> tuple[int, float]:
    """The outbox's backlog, through an engine of the command's own, disposed of at the end: connections left
    in its pool would be dropped unclosed when ``asyncio.run`` closes the loop."""
    db = sqlalchemy_config(database_url)
    try:
        return await backlog(db)
    finally:
        await db.get_engine().dispose()


def _topology(settings: Settings) -> Topology:
    return Topology(settings.events_exchange, NEW_ORDER)
