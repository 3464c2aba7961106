"""Patch discriminator on HR luma for stage-2 adversarial training (training-time only).

Why a patch discriminator: it scores each ~30 px neighbourhood, the scale of the textures a
x2 model can plausibly add, and it works on any patch size. Spectral normalisation on every conv
bounds its Lipschitz constant so it cannot overpower a 14k-parameter generator early on.
It returns the intermediate activations as well, for the latent (feature-matching) loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NEGATIVE_SLOPE = 0.2


class PatchDiscriminator(nn.Module):
    """Input [N,1,H,W] luma in 0..1; output logits [N,1,H/8-ish,W/8-ish] and the feature maps."""

    def __init__(self, base: int = 32) -> None:
        super().__init__()
        chans = [1, base, base, 2 * base, 2 * base, 4 * base]
        strides = [1, 2, 1, 2, 2]
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 4 if s == 2 else 3, stride=s, padding=1))
            for a, b, s in zip(chans[:-1], chans[1:], strides)
        )
        self.out = spectral_norm(nn.Conv2d(chans[-1], 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        h = x - 0.5
        for conv in self.convs:
            h = F.leaky_relu(conv(h), NEGATIVE_SLOPE)
            feats.append(h)
        return self.out(h), feats
