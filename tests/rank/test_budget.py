import pytest

from batude.errors import BatudeError
from batude.rank.budget import Budget, BudgetKind, Metric

PARSED = [
    ("2.52x", Metric.MACS, BudgetKind.RATIO, 2.52),
    ("40%", Metric.MACS, BudgetKind.FRACTION, 0.40),
    ("1.2GMAC", Metric.MACS, BudgetKind.ABSOLUTE, 1.2e9),
    ("1.2 GMACs", Metric.MACS, BudgetKind.ABSOLUTE, 1.2e9),
    ("3.5MFLOP", Metric.MACS, BudgetKind.ABSOLUTE, 1.75e6),
    ("3.5GFLOPs", Metric.MACS, BudgetKind.ABSOLUTE, 1.75e9),
    ("1e9MAC", Metric.MACS, BudgetKind.ABSOLUTE, 1e9),
    ("500mac", Metric.MACS, BudgetKind.ABSOLUTE, 500.0),
    ("flops:2x", Metric.MACS, BudgetKind.RATIO, 2.0),
    ("params:3x", Metric.PARAMS, BudgetKind.RATIO, 3.0),
    ("params:40%", Metric.PARAMS, BudgetKind.FRACTION, 0.40),
    ("params:1.5M", Metric.PARAMS, BudgetKind.ABSOLUTE, 1.5e6),
    ("params:2Mparams", Metric.PARAMS, BudgetKind.ABSOLUTE, 2e6),
    ("3Mparams", Metric.PARAMS, BudgetKind.ABSOLUTE, 3e6),
    ("PARAMS:2X", Metric.PARAMS, BudgetKind.RATIO, 2.0),
]


@pytest.mark.parametrize("text,metric,kind,value", PARSED, ids=[p[0] for p in PARSED])
def test_parse(text, metric, kind, value):
    b = Budget.parse(text)
    assert (b.metric, b.kind) == (metric, kind)
    assert b.value == pytest.approx(value)
    assert Budget.parse(str(b)) == b
    assert Budget.from_dict(b.to_dict()) == b


@pytest.mark.parametrize(
    "text,match",
    [
        ("1x", "no compression"),
        ("0.5x", "no compression"),
        ("120%", "between 0% and 100%"),
        ("0%", "between 0% and 100%"),
        ("abc", "does not parse"),
        ("2.5xx", "does not parse"),
        ("-2x", "does not parse"),
        ("1.2G", "MAC or FLOP"),
        ("params:1GMAC", "mixes"),
        ("macs:1.5Mparams", "mixes"),
        ("speed:2x", "unknown metric"),
        ("params:2.5", "params:2.5x"),  # 2.5 parameters in all: surely 2.5x fewer (or 2.5M) was meant
        ("", "does not parse"),
    ],
)
def test_bad_budgets_are_clear_errors(text, match):
    with pytest.raises(BatudeError, match=match):
        Budget.parse(text)


def test_limits():
    assert Budget.parse("2x").limit(1000) == 500
    assert Budget.parse("25%").limit(1000) == 250
    assert Budget.parse("300MAC").limit(1000) == 300
    assert Budget.parse("600FLOP").limit(1000) == 300


def test_malformed_record():
    with pytest.raises(BatudeError, match="malformed"):
        Budget.from_dict({"metric": "watts", "kind": "ratio", "value": 2})
