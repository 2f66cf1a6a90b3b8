"""The torch side of the seam: what any PyTorch training hands the exporter.

`exporter/` never imports torch; this package may. It holds the helpers that
turn torch objects into plain data for `exporter.TrainingMonitor` (a model's
structure, device health) and the framework adapters (Hugging Face Trainer,
Lightning), each importing its framework lazily so that none is required.
`nanogpt.cli` wires our own trainer; these serve everyone else's.
"""
