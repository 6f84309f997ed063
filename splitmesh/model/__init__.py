"""Model shards built from a local Hugging Face directory, loading only the tensors each piece needs.

source (where the files are, SmolLM2 conversion) -> arch, stack, loader (ModelSpec, layer stacks) ->
runner (a node's inference sessions), training (a node's frozen training steps), client (the client's
first and last layers), identity (weights hash, model description). Submodules import torch: import
them where a model is really needed.
"""
