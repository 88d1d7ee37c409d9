"""Triton Inference Server backend (a remote model behind the Runner contract)."""
