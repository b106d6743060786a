"""The wallets service: institutions, their keys and system accounts, wallets, and every money
movement an institution asks for, through the ledger's Batcher. Tenancy is enforced here: every
method takes the calling institution's id and never shows or moves another institution's things.

Transfer ids are scoped to the institution that chose them (``scoped_id``), so two institutions
may use the same id and no answer reveals another's transfer.
"""

from __future__ import annotations

from uuid import UUID

from ledger import Batcher, Ledger
from wallets.model import (
    Institution,
    InstitutionKind,
    Statement,
    TransferOutcome,
    TransferRequest,
    TransferView,
    Wallet,
    WalletSpec,
    WalletStatus,
)


class WalletBook:
    def __init__(self, ledger: Ledger, batcher: Batcher) -> None:
        self.ledger = ledger
        self.batcher = batcher

    # -- institutions ------------------------------------------------------------------------

    async def register_institution(
        self, institution_id: str, kind: InstitutionKind, name: str, public_key: bytes, *, actor: str | None = None
    ) -> tuple[Institution, bool]:
        """Register (idempotent: the same fields answer the existing one, created False; other
        fields raise Conflict). Opens its system accounts (funding, settlement, fees) in CNY and HKD."""
        raise NotImplementedError

    async def get_institution(self, institution_id: str) -> Institution:
        """Raises NotFound."""
        raise NotImplementedError

    async def list_institutions(self) -> list[Institution]:
        raise NotImplementedError

    async def add_key(self, institution_id: str, public_key: bytes) -> Institution:
        """A new active key; the old ones keep verifying until retired (idempotent)."""
        raise NotImplementedError

    async def retire_key(self, institution_id: str, public_key: bytes) -> Institution:
        """Raises InvalidRequest for the last active key, NotFound for an unknown one."""
        raise NotImplementedError

    async def active_keys(self, institution_id: str) -> list[bytes]:
        """The raw public keys that may sign for this institution (empty: unknown institution)."""
        raise NotImplementedError

    # -- wallets -----------------------------------------------------------------------------

    async def open_wallet(self, institution_id: str, spec: WalletSpec) -> tuple[Wallet, bool]:
        """Open (idempotent on spec.id; a generated UUIDv7 when None). Raises InvalidRequest
        (unknown currency, tier on a non-CNY or merchant wallet, unknown profile…), Conflict."""
        raise NotImplementedError

    async def get_wallet(self, institution_id: str, wallet_id: UUID) -> Wallet:
        """Raises NotFound for an unknown wallet or another institution's."""
        raise NotImplementedError

    async def set_wallet_status(
        self, institution_id: str, wallet_id: UUID, status: WalletStatus, *, actor: str | None = None
    ) -> Wallet:
        """Freeze, unfreeze (status OPEN) or close (only at zero: WalletNotEmpty). WalletClosed after close."""
        raise NotImplementedError

    async def change_tier(self, institution_id: str, wallet_id: UUID, tier: int, *, actor: str | None = None) -> Wallet:
        """An e-CNY category change (an account event); LimitBelowBalance on a downgrade below the balance."""
        raise NotImplementedError

    async def statement(
        self, institution_id: str, wallet_id: UUID, *, limit: int = 50, cursor: int | None = None
    ) -> Statement:
        raise NotImplementedError

    # -- money -------------------------------------------------------------------------------

    async def deposit(
        self, institution_id: str, wallet_id: UUID, client_id: UUID, amount_minor: int
    ) -> TransferOutcome:
        """Cash in: the institution's funding account pays the wallet."""
        raise NotImplementedError

    async def withdraw(
        self, institution_id: str, wallet_id: UUID, client_id: UUID, amount_minor: int
    ) -> TransferOutcome:
        """Cash out: the wallet pays the institution's funding account."""
        raise NotImplementedError

    async def transfer(self, institution_id: str, request: TransferRequest) -> TransferOutcome:
        """The source must be the caller's wallet (NotFound otherwise); the target any open wallet."""
        raise NotImplementedError

    async def transfer_batch(
        self, institution_id: str, requests: list[TransferRequest], *, atomic: bool
    ) -> list[TransferOutcome]:
        raise NotImplementedError

    async def post_pending(self, institution_id: str, client_id: UUID, amount_minor: int | None) -> TransferOutcome:
        raise NotImplementedError

    async def void_pending(self, institution_id: str, client_id: UUID) -> TransferOutcome:
        raise NotImplementedError

    async def get_transfer(self, institution_id: str, client_id: UUID) -> TransferOutcome:
        """The stored transfer (its current status) or the remembered refusal; NotFound otherwise."""
        raise NotImplementedError


__all__ = ["TransferView", "WalletBook"]
