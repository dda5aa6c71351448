"""Money: US dollars as :class:`~decimal.Decimal` to the nano-dollar, parsed and printed in one place.

Budgets and spend are stored as ``numeric(18, 9)``: a budget must fit that exactly (a smaller
amount would silently become 0), and an amount is printed with the digits it needs (never
``$0.0000`` for a cost of a few micro-dollars). "No budget" (None) is not $0: callers say so.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

from core.errors import RagopsError

USD_PLACES = 9  # numeric(18, 9): nano-dollars
USD_QUANTUM = Decimal(1).scaleb(-USD_PLACES)
USD_MAX = Decimal(10) ** (18 - USD_PLACES) - USD_QUANTUM


def to_decimal(amount: Decimal | float | int | str) -> Decimal:
    """An amount as Decimal; a float by its shortest repr (0.1 -> Decimal('0.1'), not its binary expansion)."""
    return amount if isinstance(amount, Decimal) else Decimal(repr(amount) if isinstance(amount, float) else amount)


def to_stored_usd(amount: Decimal | float | int, *, round_up: bool = False) -> Decimal:
    """An amount at the stored precision; ``round_up`` for holds, so any priced request holds at least $0.000000001."""
    return to_decimal(amount).quantize(USD_QUANTUM, rounding=ROUND_CEILING if round_up else ROUND_HALF_EVEN)


def parse_usd(value: Decimal | str | int | float, what: str = "amount") -> Decimal:
    """A non-negative amount in USD that the database stores exactly; :class:`RagopsError` says why not."""
    shown = str(value).strip()[:40]
    try:
        amount = to_decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise RagopsError(f"{what}: {shown!r} is not an amount in USD (e.g. 5, 0.25, 0.0000002)") from None
    if not amount.is_finite():
        raise RagopsError(f"{what}: {shown} is not an amount in USD")
    if amount < 0:
        raise RagopsError(f"{what} cannot be negative (got {shown})")
    if amount > USD_MAX:  # before quantizing: a huge exponent has more digits than the context can hold
        raise RagopsError(f"{what}: {shown} is more than the largest storable amount (${USD_MAX})")
    if amount != amount.quantize(USD_QUANTUM, rounding=ROUND_HALF_EVEN):
        raise RagopsError(
            f"{what}: {shown} has more than {USD_PLACES} decimal places; amounts are stored to "
            f"${USD_QUANTUM:f} and it would be rounded"
        )
    return amount if amount else Decimal(0)


def format_usd(amount: Decimal | float | int) -> str:
    """``$12.50``, ``$0.00``, ``$0.0000002``: at least cents, and every digit down to the nano-dollar that is not 0.

    A non-zero amount below a nano-dollar keeps two significant digits instead of printing as $0.
    """
    value = to_decimal(amount)
    sign, value = ("-" if value < 0 else ""), abs(value)
    stored = value.quantize(USD_QUANTUM, rounding=ROUND_HALF_EVEN)
    if stored == 0 and value != 0:
        return f"{sign}${value:.{-value.adjusted() + 1}f}".rstrip("0")
    text = f"{stored:f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{sign}${whole}.{cents.ljust(2, '0')}"


def format_budget(day: Decimal | None, month: Decimal | None) -> str:
    """A key's budgets for display: ``$0.00/day``, ``$5.00/day, $100.00/month``, or ``no budget``."""
    parts = [
        f"{format_usd(amount)}/{period}" for amount, period in ((day, "day"), (month, "month")) if amount is not None
    ]
    return ", ".join(parts) or "no budget"
