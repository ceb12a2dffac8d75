"""``batude.kernels`` is importable from the installed package and lazy: no triton, no CUDA at import."""

import subprocess
import sys


def test_kernels_package_import_is_lazy():
    code = (
        "import sys, torch, batude.kernels, batude.kernels.pack, batude.kernels.reference\n"
        "import batude.kernels as k\n"
        "assert callable(k.pack_tucker2) and callable(k.tucker2_conv_reference)\n"
        "print('triton' in sys.modules, 'batude.kernels._jit' in sys.modules, torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False False"


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    import batude.kernels as k

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        k.nope  # noqa: B018
