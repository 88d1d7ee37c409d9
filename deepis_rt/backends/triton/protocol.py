"""What a deepis-rt model on a Triton server looks like: its tensors and the parameter carrying its metadata.

Shared by the client (:mod:`.runner`), ``deepis_rt.load`` and the repository writer
(``deepis_rt.cluster.triton_repo``), so the names are written once.
"""

__all__ = ["META_PARAMETER", "INPUT_NAME", "OUTPUT_NAME"]

#: the model-config string parameter that carries the model's deepis-rt metadata (JSON)
META_PARAMETER = "deepis_rt.meta"
#: the tensors of a deepis-rt model: normalised tiles in, distance maps out (float32, N1ZYX)
INPUT_NAME, OUTPUT_NAME = "tomogram", "distance"
