"""Deployment: lowering (chain variants, BatchNorm folding), verified ONNX, TensorRT engines, Triton.

``export_model`` (pipeline.py) runs the steps; each step checks its own output. Heavy dependencies
(onnx, onnxruntime, onnxscript, tensorrt, tritonclient) are imported inside the functions that use
them. Sits above ``rank``/``checkpoint`` and below ``cli``.
"""
