"""Amphion's VALL-E prenets (``add_prenet``): their index layout is kept so checkpoints load."""

from __future__ import annotations

import torch
import torch.nn as nn


class Transpose(nn.Module):
    """(B, T, D) <-> (B, D, T) for the convolutional text prenet."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def text_prenet(dim: int) -> nn.Sequential:
    """3 x (conv5 + BN + ReLU + dropout) then a linear layer: (B, S, D) -> (B, S, D)."""
    layers: list[nn.Module] = [Transpose()]
    for _ in range(3):
        layers += [
            nn.Conv1d(dim, dim, kernel_size=5, padding="same"),
            nn.BatchNorm1d(dim),
            nn.ReLU(),
            nn.Dropout(0.5),
        ]
    return nn.Sequential(*layers, Transpose(), nn.Linear(dim, dim))


def audio_prenet(dim: int) -> nn.Sequential:
    """Per-frame MLP: (B, T, D) -> (B, T, D)."""
    return nn.Sequential(
        nn.Linear(dim, 256),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(256, dim),
    )
