"""Small formatting helpers shared by reports and the CLI."""

from __future__ import annotations

__all__ = ["si"]


def si(value: float, unit: str = "", digits: int = 4) -> str:
    """``1.8e9, 'MAC'`` -> ``'1.814GMAC'``: SI prefix (K, M, G, T), ``digits`` significant digits."""
    v = float(value)
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g}{prefix}{unit}"
    return f"{v:.{digits}g}{unit}"
