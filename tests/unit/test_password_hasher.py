from __future__ import annotations

import pytest

from app.accounts.security import PasswordHasher


def cheap(time_cost: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost_kib=8, parallelism=1, concurrency=2)


async def test_a_hash_verifies_its_password_only() -> None:
    hasher = cheap()
    password_hash = await hasher.hash("correct horse")

    assert password_hash.startswith("$argon2id$")
    assert await hasher.verify(password_hash, "correct horse")
    assert not await hasher.verify(password_hash, "correct horsE")


@pytest.mark.parametrize("stored", ["", "plaintext", "$argon2id$v=19$m=8,t=1,p=1$garbage"])
async def test_a_corrupt_stored_hash_fails_verification_instead_of_raising(stored: str) -> None:
    assert not await cheap().verify(stored, "anything")


async def test_changed_parameters_ask_for_a_rehash() -> None:
    old_hash = await cheap(time_cost=1).hash("correct horse")

    assert not cheap(time_cost=1).needs_rehash(old_hash)
    assert cheap(time_cost=2).needs_rehash(old_hash)
