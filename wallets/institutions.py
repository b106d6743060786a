"""Institutions: registration with their system accounts, reading them, and key rotation."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import AccountFlags, AccountResultCode, AccountSpec, Ledger
from ledger.db import read_transaction
from wallets.errors import Conflict, InvalidRequest, NotFound
from wallets.model import AccountRole, Institution, InstitutionKey, InstitutionKind
from wallets.schema import INSTITUTION_ID_LENGTH_MAX, institution_accounts, institution_keys, institutions

# The corridor's two currencies: every institution gets its system accounts in both.
SYSTEM_CURRENCIES = ("CNY", "HKD")
INSTITUTION_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
NAME_LENGTH_MAX = 128
PUBLIC_KEY_BYTES = 32
# System account ids are derived, so registering again finds the same accounts.
_SYSTEM_ACCOUNT_NAMESPACE = uuid.UUID("5a1c9a7e-6c1e-4f0b-9f4e-2d9b7c1e0a11")
_ROLE_FLAGS = {
    # Money outside the ledger (its bank account, e-CNY issued to it): may run negative.
    AccountRole.FUNDING: AccountFlags.NONE,
    # Prefunded liquidity and collected fees: real money, never below zero.
    AccountRole.SETTLEMENT: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountRole.FEES: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
}


def system_account_id(institution_id: str, currency: str, role: AccountRole) -> UUID:
    return uuid.uuid5(_SYSTEM_ACCOUNT_NAMESPACE, f"{institution_id}/{currency}/{role.value}")


class InstitutionRegistry:
    def __init__(self, ledger: Ledger, clock: Callable[[], int]) -> None:
        self.ledger = ledger
        self.clock = clock

    async def register(
        self,
        institution_id: str,
        kind: InstitutionKind,
        name: str,
        public_key: bytes,
        actor: str | None,
        net_debit_cap: tuple[int, str] | None = None,
    ) -> tuple[Institution, bool]:
        _check_registration(institution_id, kind, name, public_key)
        _check_net_debit_cap(net_debit_cap)
        await self._open_system_accounts(institution_id, actor)
        try:
            async with self.ledger.engine.begin() as conn:
                existing = await _load(conn, institution_id)
                if existing is not None:
                    return _same_or_conflict(existing, kind, name, public_key, net_debit_cap), False
                now_us = self.clock()
                cap_minor, cap_currency = net_debit_cap if net_debit_cap is not None else (None, None)
                await conn.execute(
                    institutions.insert().values(
                        id=institution_id,
                        kind=kind.value,
                        name=name,
                        created_at_us=now_us,
                        net_debit_cap_minor=cap_minor,
                        net_debit_cap_currency=cap_currency,
                    )
                )
                await conn.execute(
                    institution_keys.insert().values(
                        institution_id=institution_id, public_key=public_key, added_at_us=now_us
                    )
                )
                await conn.execute(institution_accounts.insert(), _account_rows(institution_id))
        except IntegrityError:  # registered by another process meanwhile: answer like a retry
            return _same_or_conflict(await self.get(institution_id), kind, name, public_key, net_debit_cap), False
        return await self.get(institution_id), True

    async def _open_system_accounts(self, institution_id: str, actor: str | None) -> None:
        specs = [
            AccountSpec(system_account_id(institution_id, currency, role), currency, f"system:{role.value}",
                        owner_ref=institution_id, flags=_ROLE_FLAGS[role])
            for currency in SYSTEM_CURRENCIES
            for role in AccountRole
        ]  # fmt: skip
        results = await self.ledger.create_accounts(specs, actor=actor)
        if any(result.code is not AccountResultCode.OK for result in results):
            raise Conflict(f"the system accounts of {institution_id!r} exist with other fields")

    async def get(self, institution_id: str) -> Institution:
        async with read_transaction(self.ledger.engine) as conn:
            found = await _load(conn, institution_id)
        if found is None:
            raise NotFound(f"no institution {institution_id!r}")
        return found

    async def list(self) -> list[Institution]:
        async with read_transaction(self.ledger.engine) as conn:
            ids = (await conn.execute(sa.select(institutions.c.id).order_by(institutions.c.id))).scalars().all()
            loaded = [await _load(conn, institution_id) for institution_id in ids]
        return [institution for institution in loaded if institution is not None]

    async def add_key(self, institution_id: str, public_key: bytes) -> Institution:
        _check_public_key(public_key)
        async with self.ledger.engine.begin() as conn:
            institution = await _load(conn, institution_id)
            if institution is None:
                raise NotFound(f"no institution {institution_id!r}")
            known = {key.public_key: key for key in institution.keys}
            if public_key in known and not known[public_key].active:
                raise InvalidRequest("that key was retired; a retired key is never used again")
            if public_key not in known:
                await conn.execute(
                    institution_keys.insert().values(
                        institution_id=institution_id, public_key=public_key, added_at_us=self.clock()
                    )
                )
        return await self.get(institution_id)

    async def retire_key(self, institution_id: str, public_key: bytes) -> Institution:
        async with self.ledger.engine.begin() as conn:
            institution = await _load(conn, institution_id)
            if institution is None:
                raise NotFound(f"no institution {institution_id!r}")
            active = institution.active_keys
            if public_key not in {key.public_key for key in institution.keys}:
                raise NotFound("no such key for this institution")
            if public_key in active and len(active) == 1:
                raise InvalidRequest("the last active key cannot be retired: add its successor first")
            await conn.execute(
                institution_keys.update()
                .where(institution_keys.c.institution_id == institution_id)
                .where(institution_keys.c.public_key == public_key)
                .where(institution_keys.c.retired_at_us.is_(None))
                .values(retired_at_us=self.clock())
            )
        return await self.get(institution_id)

    async def active_keys(self, institution_id: str) -> list[bytes]:
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(institution_keys.c.public_key)
                .where(institution_keys.c.institution_id == institution_id)
                .where(institution_keys.c.retired_at_us.is_(None))
            )
            return [bytes(key) for key in rows.scalars()]


async def _load(conn: AsyncConnection, institution_id: str) -> Institution | None:
    row = (await conn.execute(sa.select(institutions).where(institutions.c.id == institution_id))).first()
    if row is None:
        return None
    keys = (
        await conn.execute(
            sa.select(institution_keys)
            .where(institution_keys.c.institution_id == institution_id)
            .order_by(institution_keys.c.added_at_us)
        )
    ).all()
    accounts = (
        await conn.execute(
            sa.select(institution_accounts).where(institution_accounts.c.institution_id == institution_id)
        )
    ).all()
    institution_keys_ = tuple(
        InstitutionKey(bytes(k.public_key), k.retired_at_us is None, k.added_at_us, k.retired_at_us) for k in keys
    )
    return Institution(
        row.id, InstitutionKind(row.kind), row.name, row.created_at_us, institution_keys_,
        {(a.currency, AccountRole(a.role)): a.account_id for a in accounts},
        None if row.net_debit_cap_minor is None else (row.net_debit_cap_minor, row.net_debit_cap_currency),
    )  # fmt: skip


def _account_rows(institution_id: str) -> list[dict[str, object]]:
    return [
        dict(institution_id=institution_id, currency=currency, role=role.value,
             account_id=system_account_id(institution_id, currency, role))
        for currency in SYSTEM_CURRENCIES
        for role in AccountRole
    ]  # fmt: skip


def _same_or_conflict(
    existing: Institution,
    kind: InstitutionKind,
    name: str,
    public_key: bytes,
    net_debit_cap: tuple[int, str] | None,
) -> Institution:
    if (
        existing.kind is kind
        and existing.name == name
        and public_key in existing.active_keys
        and existing.net_debit_cap == net_debit_cap
    ):
        return existing
    raise Conflict(f"institution {existing.id!r} exists with other fields")


def _check_registration(institution_id: str, kind: InstitutionKind, name: str, public_key: bytes) -> None:
    if not isinstance(institution_id, str) or not INSTITUTION_ID_PATTERN.match(institution_id):
        raise InvalidRequest(
            f"an institution id is a slug of lower-case letters, digits and dashes, at most "
            f"{INSTITUTION_ID_LENGTH_MAX} characters"
        )
    if not isinstance(kind, InstitutionKind):
        raise InvalidRequest(f"kind must be one of {', '.join(k.value for k in InstitutionKind)}")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_LENGTH_MAX or "\x00" in name:
        raise InvalidRequest(f"name must be text of 1 to {NAME_LENGTH_MAX} characters")
    _check_public_key(public_key)


def _check_net_debit_cap(net_debit_cap: tuple[int, str] | None) -> None:
    if net_debit_cap is None:
        return
    amount_minor, currency = net_debit_cap
    if type(amount_minor) is not int or not 0 <= amount_minor <= 2**63 - 1 or currency not in SYSTEM_CURRENCIES:
        raise InvalidRequest(f"net_debit_cap is a non-negative amount in one of {', '.join(SYSTEM_CURRENCIES)}")


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidRequest("public_key must be 32 bytes (an Ed25519 public key)")
