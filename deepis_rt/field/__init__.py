"""Fields of any size with bounded memory: block plan, block execution and chunked results.

- :mod:`~deepis_rt.field.plan`: disjoint, chunk-aligned output blocks for a memory budget, each
  with the global tiles that overlap it.
- :mod:`~deepis_rt.field.blocks`: :func:`run_block` computes one block's distance map into the store.
- :mod:`~deepis_rt.field.store`: the zarr store (distance, labels, cell labels).
- :mod:`~deepis_rt.field.labels`: cell labels block by block, cells merged across block faces.
- :mod:`~deepis_rt.field.measure`: cells, synapses and quality, one conjugate at a time.
- :mod:`~deepis_rt.field.segment`: :func:`~deepis_rt.field.segment.segment_field`, the whole path
  (what ``Segmenter.segment`` and ``deepis-rt segment-field`` run). See docs/large_fields.md.
"""

from deepis_rt.field.blocks import BlockResult, RIRegions, blend_block, run_block
from deepis_rt.field.plan import Block, FieldPlan, plan_field
from deepis_rt.field.store import STORE_NAME, FieldStore

__all__ = ["Block", "BlockResult", "FieldPlan", "FieldStore", "RIRegions", "STORE_NAME", "blend_block",
           "plan_field", "run_block"]
