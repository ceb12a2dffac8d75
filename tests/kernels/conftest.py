"""Kernel tests import ``batude.kernels``; a source checkout on PYTHONPATH (the GPU machine) needs it mapped.

Nothing here sets ``TRITON_INTERPRET`` (it is process-wide and would leak into every other test):
see ``kernel_cases.py`` and ``test_interpreter_suite.py``.
"""

from batude.nn.tucker_conv import ensure_kernels_importable

ensure_kernels_importable()
