"""`transcoder-skip` — a transcoder with a linear skip path (Paulo et al. 2025 style).

    y_hat = z W_dec + b_dec + x W_skip

The skip matrix takes whatever part of the next layer is linear in the site, so the
sparse latents only need to explain the nonlinear rest. Everything else (loss, L1/TopK,
selection rule, activation-weighted input centroids as directions) is `transcoder`'s.
"""

from __future__ import annotations

from decompbench.methods.transcoder import Transcoder
from decompbench.registry import register_method


@register_method("transcoder-skip")
class TranscoderSkip(Transcoder):
    summary = "transcoder with a linear skip path from the site to the next layer"
    skip = True
