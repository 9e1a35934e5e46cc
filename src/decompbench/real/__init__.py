"""Real models: sites in Hugging Face causal LMs, an on-disk activation store, real-model
metrics (no ground truth: FVU, L0, spliced CE/KL), streaming training and SAELens interop.

``transformers`` is an optional dependency (extra ``real``); it is imported only where a
model is loaded, so everything else here works without it.
"""
