"""TensorRT backend: engine description, build, verified cache and runner."""
