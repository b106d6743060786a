"""Ledger transfers as an institution may see them."""

from __future__ import annotations

from ledger import Ledger, Transfer, TransferKind
from wallets.ids import Origin
from wallets.model import TransferStatus, TransferView

_RESOLVED_STATUS = {
    TransferKind.POST_PENDING: TransferStatus.POSTED_FROM_PENDING,
    TransferKind.VOID_PENDING: TransferStatus.VOIDED,
    TransferKind.EXPIRE_PENDING: TransferStatus.EXPIRED,
}
_KIND_NAMES = {
    TransferKind.POST_PENDING: "post",
    TransferKind.VOID_PENDING: "void",
    TransferKind.EXPIRE_PENDING: "expiry",
}


async def view_of(ledger: Ledger, transfer: Transfer, caller: str) -> TransferView:
    """The caller's own id and metadata for its own transfers; the ledger's id and no metadata for
    another institution's. A pending transfer shows how it was resolved, if it was."""
    origin = Origin.decode(transfer.user_data)
    own = origin is not None and origin.institution_id == caller
    status = TransferStatus.POSTED
    if transfer.kind is TransferKind.PENDING:
        resolution = await ledger.pending_status(transfer.id)
        status = TransferStatus.PENDING if resolution is None else _RESOLVED_STATUS[resolution]
    elif transfer.kind in _RESOLVED_STATUS:
        status = _RESOLVED_STATUS[transfer.kind]
    kind = _KIND_NAMES.get(transfer.kind) or (origin.operation if origin is not None else "transfer")
    return TransferView(
        id=origin.client_id if own and origin is not None else transfer.id,
        kind=kind,
        status=status,
        source_wallet_id=transfer.debit_account_id,
        target_wallet_id=transfer.credit_account_id,
        amount_minor=transfer.amount_minor,
        currency=transfer.currency,
        created_at_us=transfer.created_at_us,
        # A post or void carries the hold's id: the caller's own id of it, when it is the caller's.
        pending_id=(origin.client_id if own and origin is not None else transfer.pending_id)
        if transfer.pending_id is not None
        else None,
        timeout_s=transfer.timeout_s,
        expires_at_us=transfer.expires_at_us,
        metadata=origin.metadata if own and origin is not None else None,
    )
