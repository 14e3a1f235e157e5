"""Tiny random models built from transformers configs, with tokenizers trained locally.

They exercise each handler's real loading code (``from_pretrained(..., local_files_only=True)``)
without any download. Builds are cached under ``.cache/tiny-models/<transformers version>/`` so a
test session builds each one once.
"""
