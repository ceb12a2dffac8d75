"""Global compression budgets: what a rank plan may cost.

Accepted strings (case-insensitive, spaces ignored; ``macs:``/``flops:`` or ``params:`` prefix
chooses the metric, MACs by default):

=================  ====================================================================
``2.52x``          at least 2.52x fewer MACs (equivalently FLOPs) than the dense model
``40%``            at most 40% of the dense model's MACs
``1.2GMAC``        at most 1.2e9 MACs per image (``K``, ``M``, ``G``, ``T`` prefixes; ``MACs`` ok)
``3.5MFLOP``       at most 3.5e6 FLOPs per image = 1.75e6 MACs (FLOPs = 2 * MACs)
``params:3x``      at least 3x fewer parameters; ``params:40%``; ``params:1.5M`` (absolute count)
``latency:2x``     at least 2x faster than dense, as predicted by a latency lookup table
``latency:60%``    at most 60% of dense latency; ``latency:1.25ms`` (``us``/``ms``/``s``) absolute
=================  ====================================================================

MACs and parameters are those of the counted units (conv and linear layers; see
:mod:`batude.nn.profile`), for the whole model: layers that stay dense count at full cost; a
factorised Tucker layer counts as its 3-layer chain whatever exact variant is deployed. Latency is
whole-model latency at the lookup table's device, batch and dtype (see
:class:`batude.rank.latency.LatencyModel`); ``x`` is always a reduction factor, so "half the
latency of dense" is ``latency:2x`` or ``latency:50%``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from batude._format import si
from batude.errors import BatudeError

__all__ = ["Metric", "BudgetKind", "Budget"]

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?"
_HELP = "use e.g. '2.52x', '40%', '1.2GMAC', '3.5MFLOP', 'params:3x', 'params:1.5M', 'latency:2x' or 'latency:1.5ms'"
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3}  # -> milliseconds


class Metric(str, enum.Enum):
    MACS = "macs"
    PARAMS = "params"
    LATENCY = "latency"  # milliseconds per batch, predicted by a latency lookup table

    @property
    def unit(self) -> str:
        return {"macs": "MACs", "params": "params", "latency": "ms"}[self.value]


class BudgetKind(str, enum.Enum):
    RATIO = "ratio"  # value = reduction factor (> 1)
    FRACTION = "fraction"  # value = allowed fraction of dense, in (0, 1)
    ABSOLUTE = "absolute"  # value = MACs per image, parameter count, or milliseconds


@dataclass(frozen=True)
class Budget:
    """A limit on a model's MACs, parameters or latency, relative to dense or absolute."""

    metric: Metric
    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "kind", BudgetKind(self.kind))
        v = float(self.value)
        object.__setattr__(self, "value", v)
        if not v == v or v in (float("inf"), float("-inf")):
            raise BatudeError(f"budget value {v} is not a finite number; {_HELP}")
        latency = self.metric is Metric.LATENCY  # "latency:1x" / "100%": not slower than dense (a limit for --also)
        if self.kind is BudgetKind.RATIO and (v < 1.0 if latency else v <= 1.0):
            raise BatudeError(f"budget {v:g}x asks for no compression; a reduction factor must be > 1 (e.g. 2.52x)")
        if self.kind is BudgetKind.FRACTION and not (0.0 < v <= 1.0 if latency else 0.0 < v < 1.0):
            raise BatudeError(f"budget {v * 100:g}% of dense must be between 0% and 100% (exclusive)")
        if self.kind is BudgetKind.ABSOLUTE and v <= 0:
            raise BatudeError(f"budget {v:g} {self.metric.value} must be positive")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse a budget string (see the module docstring for the grammar)."""
        if not isinstance(text, str):
            raise BatudeError(f"budget must be a string, got {type(text).__name__}; {_HELP}")
        s = re.sub(r"\s+", "", text).lower()
        metric = Metric.MACS
        prefix, sep, rest = s.partition(":")
        if sep:
            if prefix in ("macs", "mac", "flops", "flop"):
                metric = Metric.MACS
            elif prefix in ("params", "param"):
                metric = Metric.PARAMS
            elif prefix in ("latency", "lat", "time"):
                return cls._parse_latency(text, rest)
            else:
                raise BatudeError(f"budget '{text}': unknown metric '{prefix}'; {_HELP}")
            s = rest
        m = re.fullmatch(_NUMBER + r"(?:(x|%)|(?P<scale>[kmgt]?)(?P<what>macs?|flops?|params?|))", s)
        if m is None:
            raise BatudeError(f"budget '{text}' does not parse; {_HELP}")
        number = float(m.group(1)) * 10 ** int(m.group(2) or 0)
        unit = m.group(3)
        if unit == "x":
            return cls(metric, BudgetKind.RATIO, number)
        if unit == "%":
            return cls(metric, BudgetKind.FRACTION, number / 100.0)
        scale, what = _SCALE[m.group("scale")], m.group("what")
        if metric is Metric.PARAMS and what.startswith(("mac", "flop")):
            raise BatudeError(f"budget '{text}' mixes a params: prefix with a {what.upper()} unit; {_HELP}")
        if what.startswith("param"):
            if sep and metric is Metric.MACS:
                raise BatudeError(f"budget '{text}' mixes a {prefix}: prefix with a params unit; {_HELP}")
            metric = Metric.PARAMS
        if metric is Metric.MACS and not what:
            raise BatudeError(f"budget '{text}': say MAC or FLOP after the number (e.g. 1.2GMAC); {_HELP}")
        if metric is Metric.PARAMS and number * scale < 1000:  # no CNN worth compressing is that small
            raise BatudeError(f"budget '{text}' would allow {number:g} parameters in all; for {number:g}x fewer write "
                              f"'params:{number:g}x', for millions 'params:{number:g}M'")
        value = number * scale / (2.0 if what.startswith("flop") else 1.0)
        return cls(metric, BudgetKind.ABSOLUTE, value)

    @classmethod
    def _parse_latency(cls, text: str, s: str) -> "Budget":
        m = re.fullmatch(_NUMBER + r"(x|%|us|ms|s)", s)
        if m is None:
            raise BatudeError(f"latency budget '{text}' does not parse; use e.g. 'latency:2x' (2x faster than dense), "
                              "'latency:60%' (60% of dense latency) or 'latency:1.5ms'")
        number, unit = float(m.group(1)) * 10 ** int(m.group(2) or 0), m.group(3)
        if unit == "x":
            if 0 < number < 1:
                raise BatudeError(f"latency budget '{text}': 'x' is a speed-up factor and must be > 1; for "
                                  f"{number:g} of dense latency write 'latency:{number * 100:g}%' or 'latency:{1 / number:.4g}x'")
            return cls(Metric.LATENCY, BudgetKind.RATIO, number)
        if unit == "%":
            return cls(Metric.LATENCY, BudgetKind.FRACTION, number / 100.0)
        return cls(Metric.LATENCY, BudgetKind.ABSOLUTE, number * _TIME[unit])

    def limit(self, dense_total: int) -> float:
        """The largest allowed whole-model cost, in this budget's metric units."""
        if self.kind is BudgetKind.RATIO:
            return dense_total / self.value
        if self.kind is BudgetKind.FRACTION:
            return dense_total * self.value
        return self.value

    def __str__(self) -> str:
        prefix = "" if self.metric is Metric.MACS else f"{self.metric.value}:"
        if self.kind is BudgetKind.RATIO:
            return f"{prefix}{self.value:g}x"
        if self.kind is BudgetKind.FRACTION:
            return f"{prefix}{self.value * 100:g}%"
        if self.metric is Metric.LATENCY:
            return f"{prefix}{self.value:.6g}ms"
        return prefix + si(self.value, "" if self.metric is Metric.PARAMS else "MAC", digits=6)

    def to_dict(self) -> dict:
        return {"metric": self.metric.value, "kind": self.kind.value, "value": self.value, "text": str(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        try:
            return cls(Metric(d["metric"]), BudgetKind(d["kind"]), float(d["value"]))
        except (KeyError, ValueError, TypeError) as err:
            raise BatudeError(f"malformed budget record {d!r} ({err}); regenerate the plan") from None
