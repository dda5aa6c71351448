"""Money: amounts parsed exactly as stored, printed with the digits they need."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.errors import RagopsError
from core.money import format_budget, format_usd, parse_usd, to_stored_usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal(0), "$0.00"),
        (Decimal("0E-9"), "$0.00"),  # how numeric(18, 9) hands back a zero
        (Decimal("0.0000002"), "$0.0000002"),
        (0.0000002, "$0.0000002"),
        (Decimal("12.5"), "$12.50"),
        (Decimal("0.000001234"), "$0.000001234"),
        (1.2345678901e-5, "$0.000012346"),  # past the nano-dollar: rounded to it
        (3e-10, "$0.0000000003"),  # below it: two significant digits, never $0
        (-0.5, "-$0.50"),
    ],
)
def test_format_usd_prints_the_digits_an_amount_needs(amount: Decimal | float, shown: str) -> None:
    assert format_usd(amount) == shown


@pytest.mark.parametrize("text", ["0", "0.0000002", "0.000000001", "5", "999999999.999999999", "1e3"])
def test_parse_usd_keeps_storable_amounts_exactly(text: str) -> None:
    assert parse_usd(text) == Decimal(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "cannot be negative"),
        ("0.0000000001", "more than 9 decimal places"),
        ("1000000000", "more than the largest storable amount"),
        ("1e1000000", "more than the largest storable amount"),  # not an InvalidOperation from quantize
        ("1" * 100_000, "more than the largest storable amount"),
        ("abc", "is not an amount in USD"),
        ("nan", "is not an amount in USD"),
        ("inf", "is not an amount in USD"),
    ],
)
def test_parse_usd_refuses_what_would_not_be_stored_exactly(text: str, reason: str) -> None:
    with pytest.raises(RagopsError, match=reason):
        parse_usd(text, "--budget-usd-day")


def test_holds_round_up_so_a_priced_request_never_holds_zero() -> None:
    assert to_stored_usd(3e-10, round_up=True) == Decimal("0.000000001")
    assert to_stored_usd(3e-10) == 0


@pytest.mark.parametrize(
    ("day", "month", "shown"),
    [
        (None, None, "no budget"),
        (Decimal(0), None, "$0.00/day"),
        (Decimal("0.0000002"), Decimal(5), "$0.0000002/day, $5.00/month"),
    ],
)
def test_no_budget_is_not_a_budget_of_zero(day: Decimal | None, month: Decimal | None, shown: str) -> None:
    assert format_budget(day, month) == shown
