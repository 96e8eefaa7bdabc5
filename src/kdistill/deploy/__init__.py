"""Deployment: export (ONNX, int8 for ONNX Runtime and for PyTorch, each file verified), compare (runs and their
exported variants timed interleaved, tables) and plots."""
