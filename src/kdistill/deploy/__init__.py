"""Deployment: export (ONNX, int8, TorchScript-free PyTorch), compare (interleaved timing, tables) and plots."""
