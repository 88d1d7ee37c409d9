"""OpenVINO backend (CPU)."""
