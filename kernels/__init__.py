"""Fused GPU kernels for Tucker chains, installed as ``batude.kernels``.

The Triton kernels arrive with the kernels issue; this package is mapped into the installed
distribution now (see ``setup.py``'s ``package_dir``) so the import path is stable. Nothing here
imports triton or touches CUDA at import time.
"""

__all__: list[str] = []
