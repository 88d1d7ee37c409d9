"""PyTorch backend: eager, CUDA graphs."""
