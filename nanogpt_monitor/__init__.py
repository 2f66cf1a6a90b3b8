"""The torch side of the seam: what any PyTorch training hands the exporter.

`exporter/` never imports torch; this package may. It turns torch objects into plain data for
`exporter.TrainingMonitor` (a model's structure, device health) and holds the framework adapters,
each importing its framework lazily so that none is required.
"""
