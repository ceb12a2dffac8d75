"""batude packaging. The version is single-sourced from batude/_version.py."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version: dict = {}
exec((here / "batude" / "_version.py").read_text(), version)

setup(
    name="batude",
    version=version["__version__"],
    description="Budget-aware Tucker decomposition (BATUDE) of CNNs, carried to fast deployment",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["batude", "batude.*"]) + ["batude.kernels"],
    package_dir={"batude.kernels": "kernels"},
    # torch: the oldest release anything here ran on is 2.11 (the GPU machines' image: kernels, benchmarks);
    # the CPU suite runs on 2.14. 2.11 refuses torch.cuda.set_device("cuda"), which a 2.14-only run did not catch.
    install_requires=["torch>=2.11", "numpy", "tensorly>=0.8"],
    extras_require={
        "vision": ["torchvision"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "trt": ["tensorrt"],
        "gpu": ["triton"],
        "serve": ["tritonclient[grpc]"],
        "dev": ["pytest", "torchvision", "matplotlib", "onnx", "onnxruntime", "onnxscript", "tritonclient[grpc]"],
    },
    entry_points={
        "console_scripts": [
            "batude=batude.cli:main",
            "batude-export=batude.cli:export_main",
        ]
    },
)
