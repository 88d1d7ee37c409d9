"""napari plugin of deepis-rt (npe2 manifest ``napari.yaml``; ``pip install 'deepis-rt[napari]'``).

* readers: a results folder of ``deepis-rt stream`` / ``demo`` / ``batch`` (RI, labels, cell and
  synapse tracks, synapse points, calibrated in um and s, read lazily) and tomogram files;
* widgets: follow a running stream, segment an image layer, correct labels and fine-tune;
* sample data: a small synthetic CAR-T / target conjugate time-lapse.

The readers and layer builders (:mod:`~deepis_rt.napari.reader`, :mod:`~deepis_rt.napari.layers`,
:mod:`~deepis_rt.napari.results`) import neither napari nor Qt; the widgets do.
"""
