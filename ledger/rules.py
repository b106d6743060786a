"""The transfer rules, applied in memory to one batch.

The storage layer locks every account a batch touches, loads them into :class:`AccountState`, and
hands the commands to :class:`BatchEngine`, which checks each command in order against the
*running* balances and records its effect. Nothing here touches the database or the clock, so the
rules are tested directly and the hot path pays no I/O per transfer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID
from zoneinfo import ZoneInfo

from ledger.errors import InvariantViolation, ResultCode
from ledger.model import AccountFlags, AccountStatus, Refusal, Transfer, TransferCommand, TransferKind, TransferResult

# Daily and annual debit caps count days in the corridor's business time zone.
BUSINESS_TIME_ZONE = ZoneInfo("Asia/Shanghai")
BIGINT_MAX = 2**63 - 1
USER_DATA_LENGTH_MAX = 1024
CURRENCY_LENGTH_MAX = 3  # ISO 4217 codes; a longer one cannot be any account's currency
TIMEOUT_S_MAX = 366 * 24 * 3600

_DEBITS_MUST_NOT_EXCEED_CREDITS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_MUST_NOT_EXCEED_DEBITS = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_OPEN = int(AccountStatus.OPEN)
_FROZEN = int(AccountStatus.FROZEN)
_POSTED = TransferKind.POSTED
_PENDING = TransferKind.PENDING
_POST = TransferKind.POST_PENDING
_VOID = TransferKind.VOID_PENDING
_EXPIRE = TransferKind.EXPIRE_PENDING
_RESOLVED_CODE = {
    _POST: ResultCode.PENDING_TRANSFER_ALREADY_POSTED,
    _VOID: ResultCode.PENDING_TRANSFER_ALREADY_VOIDED,
    _EXPIRE: ResultCode.PENDING_TRANSFER_EXPIRED,
}


def business_day_and_year(at_us: int) -> tuple[int, int]:
    """The Asia/Shanghai calendar day (proleptic ordinal) and year of a UTC timestamp."""
    local = datetime.fromtimestamp(at_us // 1_000_000, BUSINESS_TIME_ZONE)
    return local.toordinal(), local.year


@dataclass(slots=True)
class AccountState:
    """An account row as locked for one batch; the engine changes it in place."""

    id: UUID
    currency: str
    flags: int
    status: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    balance_cap_minor: int | None
    transfer_cap_minor: int | None
    daily_debit_cap_minor: int | None
    annual_debit_cap_minor: int | None
    debit_balance_cap_minor: int | None
    debit_day: int
    debits_day_minor: int
    debit_year: int
    debits_year_minor: int
    touched: bool = False

    def snapshot(self) -> tuple[int, ...]:
        return (
            self.debits_posted,
            self.credits_posted,
            self.debits_pending,
            self.credits_pending,
            self.debit_day,
            self.debits_day_minor,
            self.debit_year,
            self.debits_year_minor,
        )

    def restore(self, saved: tuple[int, ...]) -> None:
        (
            self.debits_posted,
            self.credits_posted,
            self.debits_pending,
            self.credits_pending,
            self.debit_day,
            self.debits_day_minor,
            self.debit_year,
            self.debits_year_minor,
        ) = saved


class _Undo:
    """What a linked chain changed, so that a failure inside it can put everything back."""

    __slots__ = ("accounts", "ids", "new_count", "resolved")

    def __init__(self, new_count: int) -> None:
        self.accounts: dict[UUID, tuple[AccountState, tuple[int, ...]]] = {}
        self.ids: list[UUID] = []
        self.resolved: list[UUID] = []
        self.new_count = new_count

    def save(self, account: AccountState) -> None:
        if account.id not in self.accounts:
            self.accounts[account.id] = (account, account.snapshot())


class BatchEngine:
    """Applies a batch of commands against locked account states, in order.

    ``known`` maps transfer ids already stored (for idempotency and for pending transfers that
    posts and voids refer to); ``resolved`` maps pending ids already resolved to the kind of the
    resolving transfer; ``refused`` maps ids refused before. All grow as the batch goes.
    """

    def __init__(
        self,
        accounts: dict[UUID, AccountState],
        known: dict[UUID, Transfer],
        resolved: dict[UUID, TransferKind],
        now_us: int,
        refused: dict[UUID, Refusal] | None = None,
    ) -> None:
        self.accounts = accounts
        self.known = known
        self.resolved = resolved
        self.refused = {} if refused is None else refused
        self.now_us = now_us
        self.day, self.year = business_day_and_year(now_us)
        self.new_transfers: list[Transfer] = []
        self.new_refusals: list[Refusal] = []

    def apply(self, commands: list[TransferCommand]) -> list[TransferResult]:
        results: list[TransferResult] = []
        count = len(commands)
        index = 0
        while index < count:
            command = commands[index]
            if command.linked is not True:  # only a real True links: a malformed value fails alone
                results.append(self._remember_refusal(command, self._apply_one(command, None)))
                index += 1
                continue
            end = index
            while end < count and commands[end].linked is True:
                end += 1
            if end == count:
                # The batch ends inside a chain: the chain has no last event, so none of it runs.
                results.extend(TransferResult(ResultCode.LINKED_EVENT_FAILED) for _ in range(index, count - 1))
                results.append(TransferResult(ResultCode.LINKED_EVENT_CHAIN_OPEN))
                break
            results.extend(self._apply_chain(commands[index : end + 1]))
            index = end + 1
        return results

    def _apply_chain(self, chain: list[TransferCommand]) -> list[TransferResult]:
        undo = _Undo(len(self.new_transfers))
        results: list[TransferResult] = []
        for position, command in enumerate(chain):
            result = self._apply_one(command, undo)
            if not result.ok or (result.replayed and command.replay_ends_chain is True):
                self._roll_back(undo)
                failed = [TransferResult(ResultCode.LINKED_EVENT_FAILED) for _ in chain]
                failed[position] = self._remember_refusal(command, result)
                return failed
            results.append(result)
        return results

    def _roll_back(self, undo: _Undo) -> None:
        for account, saved in undo.accounts.values():
            account.restore(saved)
        for transfer_id in undo.ids:
            del self.known[transfer_id]
        for pending_id in undo.resolved:
            del self.resolved[pending_id]
        del self.new_transfers[undo.new_count :]

    def _remember_refusal(self, command: TransferCommand, result: TransferResult) -> TransferResult:
        """Store a business refusal under the command's id (see ``ResultCode.is_remembered``).
        Expiries are the ledger's own commands under fresh ids: nobody retries them."""
        if result.code.is_remembered and not result.replayed and command.kind is not _EXPIRE:
            refusal = Refusal.of(command, result.code, self.now_us)
            self.refused[command.id] = refusal
            self.new_refusals.append(refusal)
        return result

    def _apply_one(self, command: TransferCommand, undo: _Undo | None) -> TransferResult:
        if not well_formed(command):
            return TransferResult(
                ResultCode.INVALID_AMOUNT if _amount_malformed(command) else ResultCode.INVALID_COMMAND
            )
        existing = self.known.get(command.id)
        if existing is not None:
            if _same_fields(command, existing):
                return TransferResult(ResultCode.OK, existing, replayed=True)
            return TransferResult(ResultCode.EXISTS_WITH_DIFFERENT_FIELDS, existing)
        refusal = self.refused.get(command.id)
        if refusal is not None:
            if refusal.same_command(command):
                return TransferResult(refusal.code, replayed=True)
            return TransferResult(ResultCode.EXISTS_WITH_DIFFERENT_FIELDS)
        kind = command.kind
        if kind is _POSTED or kind is _PENDING:
            code = self._check_new(command)
            if code is not None:
                return TransferResult(code)
            return TransferResult(ResultCode.OK, self._record_new(command, undo))
        if kind is _POST or kind is _VOID or kind is _EXPIRE:
            return self._resolve(command, undo)
        return TransferResult(ResultCode.INVALID_COMMAND)

    # -- posted and pending transfers -------------------------------------------------------

    def _check_new(self, command: TransferCommand) -> ResultCode | None:
        amount = command.amount_minor
        if type(amount) is not int or amount <= 0:
            return ResultCode.INVALID_AMOUNT
        if command.pending_id is not None or command.currency is None:
            return ResultCode.INVALID_COMMAND
        if command.timeout_s is not None and (
            command.kind is _POSTED or type(command.timeout_s) is not int or not 0 < command.timeout_s <= TIMEOUT_S_MAX
        ):
            return ResultCode.INVALID_COMMAND
        if command.debit_account_id is None or command.credit_account_id is None:
            return ResultCode.INVALID_COMMAND
        if command.debit_account_id == command.credit_account_id:
            return ResultCode.ACCOUNTS_MUST_BE_DIFFERENT
        debit = self.accounts.get(command.debit_account_id)
        credit = self.accounts.get(command.credit_account_id)
        if debit is None or credit is None:
            return ResultCode.ACCOUNT_NOT_FOUND
        if debit.status != _OPEN or credit.status != _OPEN:
            return ResultCode.ACCOUNT_FROZEN if _FROZEN in (debit.status, credit.status) else ResultCode.ACCOUNT_CLOSED
        if debit.currency != command.currency or credit.currency != command.currency:
            return ResultCode.CURRENCY_MISMATCH
        if debit.transfer_cap_minor is not None and amount > debit.transfer_cap_minor:
            return ResultCode.TRANSFER_CAP_EXCEEDED
        if (
            debit.flags & _DEBITS_MUST_NOT_EXCEED_CREDITS
            and debit.debits_posted + debit.debits_pending + amount > debit.credits_posted
        ):
            return ResultCode.INSUFFICIENT_FUNDS
        if (
            credit.flags & _CREDITS_MUST_NOT_EXCEED_DEBITS
            and credit.credits_posted + credit.credits_pending + amount > credit.debits_posted
        ):
            return ResultCode.CREDITS_EXCEED_DEBITS
        if (
            debit.debit_balance_cap_minor is not None
            and debit.debits_posted + debit.debits_pending + amount - debit.credits_posted
            > debit.debit_balance_cap_minor
        ):
            return ResultCode.DEBIT_BALANCE_CAP_EXCEEDED
        if (
            credit.balance_cap_minor is not None
            and credit.credits_posted + credit.credits_pending + amount - credit.debits_posted
            > credit.balance_cap_minor
        ):
            return ResultCode.BALANCE_CAP_EXCEEDED
        # ">=": a process whose clock lags another's must not reopen a day the other has closed.
        if debit.daily_debit_cap_minor is not None:
            spent_today = debit.debits_day_minor if debit.debit_day >= self.day else 0
            if spent_today + amount > debit.daily_debit_cap_minor:
                return ResultCode.DAILY_DEBIT_CAP_EXCEEDED
        if debit.annual_debit_cap_minor is not None:
            spent_this_year = debit.debits_year_minor if debit.debit_year >= self.year else 0
            if spent_this_year + amount > debit.annual_debit_cap_minor:
                return ResultCode.ANNUAL_DEBIT_CAP_EXCEEDED
        if (
            debit.debits_posted + debit.debits_pending + amount > BIGINT_MAX
            or credit.credits_posted + credit.credits_pending + amount > BIGINT_MAX
        ):
            return ResultCode.OVERFLOW
        return None

    def _record_new(self, command: TransferCommand, undo: _Undo | None) -> Transfer:
        amount, currency = command.amount_minor, command.currency
        debit_account_id, credit_account_id = command.debit_account_id, command.credit_account_id
        if amount is None or currency is None or debit_account_id is None or credit_account_id is None:
            # The checks before this one answered every command that lacks one of these.
            raise InvariantViolation(f"transfer {command.id} reached the books without its accounts or amount")
        debit = self.accounts[debit_account_id]
        credit = self.accounts[credit_account_id]
        if undo is not None:
            undo.save(debit)
            undo.save(credit)
        if command.kind is _POSTED:
            debit.debits_posted += amount
            credit.credits_posted += amount
            expires_at_us = None
        else:
            debit.debits_pending += amount
            credit.credits_pending += amount
            expires_at_us = None if command.timeout_s is None else self.now_us + command.timeout_s * 1_000_000
        self._count_debit(debit, amount)
        debit.touched = credit.touched = True
        transfer = Transfer(
            command.id,
            command.kind,
            debit_account_id,
            credit_account_id,
            amount,
            0,
            currency,
            None,
            command.timeout_s,
            expires_at_us,
            command.linked,
            command.user_data,
            self.now_us,
        )
        self._remember(transfer, undo)
        return transfer

    def _count_debit(self, debit: AccountState, amount: int) -> None:
        # A counter only ever moves forward in time (see _check_new).
        if debit.debit_day >= self.day:
            debit.debits_day_minor += amount
        else:
            debit.debit_day, debit.debits_day_minor = self.day, amount
        if debit.debit_year >= self.year:
            debit.debits_year_minor += amount
        else:
            debit.debit_year, debit.debits_year_minor = self.year, amount

    def _uncount_debit(self, debit: AccountState, pending: Transfer, amount: int) -> None:
        """Give back a released hold to the day and year it was counted in, if still current."""
        if amount == 0:
            return
        day, year = business_day_and_year(pending.created_at_us)
        if debit.debit_day == day:
            debit.debits_day_minor -= amount
        if debit.debit_year == year:
            debit.debits_year_minor -= amount

    def _remember(self, transfer: Transfer, undo: _Undo | None) -> None:
        self.known[transfer.id] = transfer
        self.new_transfers.append(transfer)
        if undo is not None:
            undo.ids.append(transfer.id)

    # -- posts, voids and expiries of pending transfers -------------------------------------

    def _resolve(self, command: TransferCommand, undo: _Undo | None) -> TransferResult:
        kind = command.kind
        if command.pending_id is None or command.timeout_s is not None:
            return TransferResult(ResultCode.INVALID_COMMAND)
        if kind is not _POST and command.amount_minor is not None:
            return TransferResult(ResultCode.INVALID_COMMAND)
        pending = self.known.get(command.pending_id)
        if pending is None:
            return TransferResult(ResultCode.PENDING_TRANSFER_NOT_FOUND)
        if pending.kind is not _PENDING:
            return TransferResult(ResultCode.PENDING_TRANSFER_NOT_PENDING)
        if (
            (command.debit_account_id is not None and command.debit_account_id != pending.debit_account_id)
            or (command.credit_account_id is not None and command.credit_account_id != pending.credit_account_id)
            or (command.currency is not None and command.currency != pending.currency)
        ):
            return TransferResult(ResultCode.PENDING_FIELDS_MISMATCH)
        resolution = self.resolved.get(pending.id)
        if resolution is not None:
            return TransferResult(_RESOLVED_CODE[resolution])
        expired = pending.expires_at_us is not None and self.now_us >= pending.expires_at_us
        if kind is _EXPIRE:
            if not expired:
                return TransferResult(ResultCode.INVALID_COMMAND)
        elif expired:
            return TransferResult(ResultCode.PENDING_TRANSFER_EXPIRED)
        amount = pending.amount_minor
        if kind is _POST and command.amount_minor is not None:
            amount = command.amount_minor
            if type(amount) is not int or amount <= 0:
                return TransferResult(ResultCode.INVALID_AMOUNT)
            if amount > pending.amount_minor:
                return TransferResult(ResultCode.EXCEEDS_PENDING_AMOUNT)
        debit = self.accounts.get(pending.debit_account_id)
        credit = self.accounts.get(pending.credit_account_id)
        if debit is None or credit is None:
            return TransferResult(ResultCode.ACCOUNT_NOT_FOUND)
        if kind is _POST and (debit.status != _OPEN or credit.status != _OPEN):
            # Releasing a hold on a frozen account is allowed; moving the money is not.
            return TransferResult(ResultCode.ACCOUNT_FROZEN)
        if undo is not None:
            undo.save(debit)
            undo.save(credit)
        debit.debits_pending -= pending.amount_minor
        credit.credits_pending -= pending.amount_minor
        if kind is _POST:
            debit.debits_posted += amount
            credit.credits_posted += amount
            self._uncount_debit(debit, pending, pending.amount_minor - amount)
        else:
            self._uncount_debit(debit, pending, pending.amount_minor)
        debit.touched = credit.touched = True
        transfer = Transfer(
            command.id,
            kind,
            pending.debit_account_id,
            pending.credit_account_id,
            amount,
            pending.amount_minor,
            pending.currency,
            pending.id,
            None,
            None,
            command.linked,
            command.user_data,
            self.now_us,
        )
        self._remember(transfer, undo)
        self.resolved[pending.id] = kind
        if undo is not None:
            undo.resolved.append(pending.id)
        return TransferResult(ResultCode.OK, transfer)


def _same_fields(command: TransferCommand, stored: Transfer) -> bool:
    """Whether a retried command asks for exactly what the stored transfer did."""
    if command.kind is not stored.kind or command.linked != stored.linked or command.user_data != stored.user_data:
        return False
    if command.kind is _POSTED or command.kind is _PENDING:
        return (
            command.debit_account_id == stored.debit_account_id
            and command.credit_account_id == stored.credit_account_id
            and command.amount_minor == stored.amount_minor
            and command.currency == stored.currency
            and command.timeout_s == stored.timeout_s
        )
    wanted_amount = stored.released_minor if command.amount_minor is None else command.amount_minor
    return (
        command.pending_id == stored.pending_id
        and command.debit_account_id in (None, stored.debit_account_id)
        and command.credit_account_id in (None, stored.credit_account_id)
        and command.currency in (None, stored.currency)
        and (command.kind is not _POST or wanted_amount == stored.amount_minor)
    )


def well_formed(command: TransferCommand) -> bool:
    """Whether every field has a type the ledger can store, and ``user_data`` is text both
    databases can hold: at most USER_DATA_LENGTH_MAX characters, UTF-8, no NUL (PostgreSQL
    refuses it). Checked before anything hashes or stores the command, so that a malformed command
    fails alone instead of failing the database statement every other command of its batch shares."""
    if (
        not isinstance(command.id, UUID)
        or type(command.kind) is not TransferKind
        or type(command.linked) is not bool
        or not _optional(command.debit_account_id, UUID)
        or not _optional(command.credit_account_id, UUID)
        or not _optional(command.pending_id, UUID)
        or (command.currency is not None and not storable_text(command.currency, CURRENCY_LENGTH_MAX))
        or _amount_malformed(command)
        or (command.timeout_s is not None and type(command.timeout_s) is not int)
    ):
        return False
    return command.user_data is None or storable_text(command.user_data, USER_DATA_LENGTH_MAX)


def storable_text(value: object, length_max: int) -> bool:
    """A str of at most ``length_max`` characters that both databases store as given: UTF-8
    encodable (no lone surrogate) and without NUL, which PostgreSQL refuses."""
    if type(value) is not str or len(value) > length_max or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _optional(value: object, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _amount_malformed(command: TransferCommand) -> bool:
    """Not an int, or beyond what a BIGINT column holds (a refusal stores the amount as sent)."""
    amount = command.amount_minor
    return amount is not None and (type(amount) is not int or not -BIGINT_MAX - 1 <= amount <= BIGINT_MAX)


def accounts_needed(commands: Iterable[TransferCommand], known: dict[UUID, Transfer]) -> set[UUID]:
    """Every account a batch may touch: named directly, or through the pending transfer it resolves."""
    ids: set[UUID] = set()
    for command in commands:
        if command.debit_account_id is not None:
            ids.add(command.debit_account_id)
        if command.credit_account_id is not None:
            ids.add(command.credit_account_id)
        if command.pending_id is not None:
            pending = known.get(command.pending_id)
            if pending is not None:
                ids.add(pending.debit_account_id)
                ids.add(pending.credit_account_id)
    return ids
