"""Limit profiles as data: e-CNY wallet categories (CNY) and Hong Kong SVF profiles (HKD), mapped
onto the ledger's per-account caps. Regulators change these figures; they live here, not in code.

Sources (as collected for this corridor): e-CNY categories 2 and 4 (balance, per payment, per day)
as reported by Caixin on the PBoC wallet specifications and repeated by the PBoC Digital Currency
Institute (2021); category 4's annual 50,000 from reports on the Hong Kong rollout (May 2024);
category 3 is an assumption to confirm. ``svf-basic``'s HKD 3,000 balance cap is an assumed default.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import Limits


@dataclass(frozen=True, slots=True)
class LimitProfile:
    """Caps in minor units (fen, cents); None is no cap."""

    name: str
    currency: str | None  # None: any currency
    balance_cap_minor: int | None = None
    per_payment_minor: int | None = None
    daily_minor: int | None = None
    annual_minor: int | None = None

    @property
    def limits(self) -> Limits:
        return Limits(
            balance_cap_minor=self.balance_cap_minor,
            transfer_cap_minor=self.per_payment_minor,
            daily_debit_cap_minor=self.daily_minor,
            annual_debit_cap_minor=self.annual_minor,
        )


def _yuan(amount: int) -> int:
    return amount * 100


PROFILES: dict[str, LimitProfile] = {
    profile.name: profile
    for profile in (
        LimitProfile("ecny-1", "CNY"),  # strongest KYC, in person: no caps
        LimitProfile("ecny-2", "CNY", _yuan(500_000), _yuan(50_000), _yuan(100_000), None),
        LimitProfile("ecny-3", "CNY", _yuan(20_000), _yuan(5_000), _yuan(10_000), _yuan(100_000)),
        LimitProfile("ecny-4", "CNY", _yuan(10_000), _yuan(2_000), _yuan(5_000), _yuan(50_000)),
        LimitProfile("svf-basic", "HKD", balance_cap_minor=_yuan(3_000)),
        LimitProfile("svf-verified", "HKD"),
        LimitProfile("merchant", None),  # public wallets: limits set per institution, none by default
    )
}
ECNY_TIERS = (1, 2, 3, 4)
ECNY_TIER_DEFAULT = 4
HKD_PROFILE_DEFAULT = "svf-basic"


def ecny_profile(tier: int) -> LimitProfile:
    return PROFILES[f"ecny-{tier}"]


def tier_of(profile_name: str | None) -> int | None:
    if profile_name is not None and profile_name.startswith("ecny-"):
        return int(profile_name.removeprefix("ecny-"))
    return None
