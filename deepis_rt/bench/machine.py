"""What a benchmark ran on; defined in :mod:`deepis_rt.core.machine` (exports and run records use it too)."""

from deepis_rt.core.machine import (
    cpu_flags,
    cpu_model,
    describe_host,
    describe_machine,
    gpu_list,
    library_versions,
    package_versions,
)

__all__ = ["describe_machine", "describe_host", "library_versions", "package_versions", "gpu_list", "cpu_model",
           "cpu_flags"]
