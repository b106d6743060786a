"""What the FX desk refuses, as the wallets layer's exceptions (a code from the HTTP contract and a
status) so that the service maps them to problem+json as it maps every other refusal. A quote whose
stored signature does not verify is not a refusal: it is a broken invariant (a row changed behind
the ledger's back) and stops the operation loudly."""

from __future__ import annotations

from ledger.errors import InvariantViolation
from wallets.errors import InvalidRequest, NotFound, WalletError


class UnsupportedPair(InvalidRequest):
    """The currencies are not a pair the corridor converts (HKD to CNY or CNY to HKD)."""


class NoRate(WalletError):
    """No rate has been set for the pair yet: nothing can be quoted until an operator sets one.

    The contract has no code of its own for it: ``invalid_request`` with 409, since the request is
    well formed and would succeed once the ledger's state (a rate) is there."""

    code, status = "invalid_request", 409


class QuoteNotFound(NotFound):
    """No such quote, or another institution's (never told apart)."""


class QuoteExpired(WalletError):
    """The quote's ``expires_at`` has passed: ask for a new one. 409 as ``service.problems.CODES``
    has it (and as ``pending_transfer_expired``): the quote exists; its time is over."""

    code, status = "quote_expired", 409


class QuoteSignatureInvalid(InvariantViolation):
    """A stored quote's signature does not verify against its fields and the ledger's key."""
