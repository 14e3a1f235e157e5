"""Shared kernel of inferq: settings, the model catalog, the queue protocol and error objects.

Imported by both the API (which must stay free of torch/transformers) and the workers, so
nothing here imports model code.
"""
