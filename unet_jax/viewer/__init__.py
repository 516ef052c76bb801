"""The napari plugin: dock widgets that run the library from the viewer (manifest: napari.yaml)."""
