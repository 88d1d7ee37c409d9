"""napari dock widgets of deepis-rt (need napari and a Qt binding: ``pip install 'deepis-rt[napari]'``)."""
