"""Deployment: lowering, ONNX, TensorRT, serving (built by the export issue).

Sits above ``rank`` and ``checkpoint`` and below ``cli``; heavy dependencies (onnx, onnxruntime,
tensorrt) are imported inside the functions that use them.
"""
