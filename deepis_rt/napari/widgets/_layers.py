"""Putting layer-data tuples into a viewer: new layers added, layers of the same name updated in place."""

from __future__ import annotations

from typing import Any

__all__ = ["show_layers", "physical_voxel_size"]


def show_layers(viewer: Any, layer_data: list[tuple]) -> list[Any]:
    """Add each ``(data, kwargs, type)`` as a layer, or update the layer of that name (its settings kept).

    Image and Labels layers get their new (longer) data; Points their data and features; Tracks are
    replaced at the same place in the layer list (their properties must match their data at once).
    """
    from napari.layers import Layer

    shown = []
    for data, kwargs, kind in layer_data:
        name = kwargs["name"]
        layer = viewer.layers[name] if name in viewer.layers else None
        if layer is None:
            shown.append(viewer.add_layer(Layer.create(data, kwargs, kind)))
        elif kind == "tracks":
            index = viewer.layers.index(layer)
            viewer.layers.remove(layer)
            new = Layer.create(data, kwargs, kind)
            viewer.layers.insert(index, new)
            shown.append(new)
        elif kind == "points":
            layer.data = data
            layer.features = kwargs.get("features", {})
            layer.scale = kwargs.get("scale", layer.scale)
            shown.append(layer)
        else:  # the frame interval is known better as frames come: the scale follows
            layer.data = data
            layer.scale = kwargs.get("scale", layer.scale)
            shown.append(layer)
    return shown


def physical_voxel_size(layer: Any) -> tuple[float, float, float]:
    """The (Z, Y, X) voxel size in um of an image layer, from its scale and units.

    Raises
    ------
    ValueError
        The layer's spatial axes are not in a length unit (an uncalibrated image).
    """
    import pint

    scale = tuple(float(s) for s in layer.scale[-3:])
    units = getattr(layer, "units", None)
    out = []
    for s, u in zip(scale, units[-3:] if units is not None else (None,) * 3, strict=True):
        try:
            out.append(float((s * u).to("micrometer").magnitude))
        except (pint.DimensionalityError, AttributeError, TypeError):
            raise ValueError(f"layer {layer.name!r}: its axes are in {u}, not a length; set its scale in um "
                             "(layer.scale and layer.units) so that deepis-rt knows the voxel size") from None
    return tuple(out)  # type: ignore[return-value]
