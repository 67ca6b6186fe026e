"""``litestar users …``: account administration that the public API deliberately can't do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click
import msgspec
from litestar.plugins import CLIPluginProtocol
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Role, User
from app.accounts.schemas import Registration
from app.accounts.security import PasswordHasher
from app.accounts.services import UserService, normalize_email
from app.config import Settings
from app.storage.db import sqlalchemy_config
from app.web.errors import ServiceError


class AccountsCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        @cli.group(help="Manage user accounts.")
        def users() -> None: ...

        @users.command(
            name="create-admin", help="Create an admin account (password prompted or $ADMIN_PASSWORD)."
        )
        @click.argument("email")
        @click.password_option(envvar="ADMIN_PASSWORD", help="The new account's password.")
        def create_admin(email: str, password: str) -> None:
            try:
                registration = msgspec.convert({"email": email, "password": password}, Registration)
            except msgspec.ValidationError as exc:
                raise click.UsageError(str(exc)) from None
            user = _run(_create_admin(registration))
            click.echo(f"admin {user.email} created with id {user.id}")

        @users.command(help="Give an existing account the admin role.")
        @click.argument("email")
        def promote(email: str) -> None:
            user = _run(_promote(email))
            click.echo(f"{user.email} is now an admin; tokens issued from now on carry the role")


def _run(operation: object) -> User:
    try:
        return asyncio.run(operation)  # type: ignore[arg-type]
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None


@asynccontextmanager
async def _session(database_url: str) -> AsyncIterator[AsyncSession]:
    """A session on an engine of the command's own, disposed of when the command ends: connections left in its
    pool would be dropped unclosed when ``asyncio.run`` closes the loop."""
    db = sqlalchemy_config(database_url)
    try:
        async with db.get_session() as session:
            yield session
    finally:
        await db.get_engine().dispose()


async def _create_admin(registration: Registration) -> User:
    settings = Settings.from_env()
    hasher = PasswordHasher.from_settings(settings)
    async with _session(settings.database_url) as session:
        users = UserService(session=session)
        return await users.register(registration.email, registration.password, hasher, role=Role.ADMIN)


async def _promote(email: str) -> User:
    async with _session(Settings.from_env().database_url) as session:
        users = UserService(session=session)
        user = await users.get_one_or_none(email=normalize_email(email))
        if user is None:
            raise click.ClickException(f"no account with the email {normalize_email(email)}")
        user.role = Role.ADMIN
        return await users.update(user, auto_commit=True)
