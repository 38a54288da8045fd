"""The HAR architectures in PyTorch, loaded with the weights of a harstream (Flax) model.

This is the peer a user would most likely deploy instead of harstream, so the benchmark
runs it with the very same weights: same input layout as the service gets ((n, 80, 3),
samples x axes), same standardisation, same softmax at the end. Imported only when
PyTorch is installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)


class TorchHarCNN(nn.Module):
    """``models.har.network.HarCNN`` in PyTorch: the convolutions run channels-first (NCW)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, num_classes: int = 6, dropout=0.5):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 1, -1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 1, -1))
        self.conv1 = nn.Conv1d(3, 100, 10)
        self.conv2 = nn.Conv1d(100, 100, 10)
        self.conv3 = nn.Conv1d(100, 160, 10)
        self.conv4 = nn.Conv1d(160, 160, 10)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(160, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``(n, 80, 3)`` windows (samples x axes, as the service receives them)."""
        x = ((x - self.mean) / self.std).transpose(1, 2)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool1d(x, 3, 3)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        return self.dense(self.dropout(x.mean(dim=2)))

    def load_flax(self, params: Mapping[str, Any]) -> TorchHarCNN:
        """Copy Flax weights: conv kernels (k, in, out) -> (out, in, k), dense kernel transposed."""
        with torch.no_grad():
            for name in ("conv1", "conv2", "conv3", "conv4"):
                layer = getattr(self, name)
                layer.weight.copy_(_tensor(params[name]["kernel"]).permute(2, 1, 0))
                layer.bias.copy_(_tensor(params[name]["bias"]))
            self.dense.weight.copy_(_tensor(params["dense"]["kernel"]).T)
            self.dense.bias.copy_(_tensor(params["dense"]["bias"]))
        return self


class TorchHarLSTM(nn.Module):
    """``models.har.network.HarLSTM`` in PyTorch (``nn.LSTM``, gates in the same i, f, g, o
    order)."""

    def __init__(
        self, mean: np.ndarray, std: np.ndarray, num_classes=6, hidden=64, layers=2, dropout=0.5
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 1, -1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 1, -1))
        self.lstm = nn.LSTM(3, hidden, num_layers=layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``(n, 80, 3)`` windows, from the last step of the top layer."""
        out, _ = self.lstm((x - self.mean) / self.std)
        return self.dense(self.dropout(out[:, -1, :]))

    def load_flax(self, params: Mapping[str, Any]) -> TorchHarLSTM:
        """Copy Flax ``OptimizedLSTMCell`` weights: per-gate dense layers -> stacked matrices.

        Flax has input kernels without bias (``ii``, ``if``, ``ig``, ``io``) and hidden
        kernels with bias (``hi``, ...); PyTorch has two bias vectors that are summed.
        """
        with torch.no_grad():
            for layer in range(self.lstm.num_layers):
                cell = params[f"OptimizedLSTMCell_{layer}"]
                w_ih = torch.cat([_tensor(cell[f"i{g}"]["kernel"]).T for g in "ifgo"])
                w_hh = torch.cat([_tensor(cell[f"h{g}"]["kernel"]).T for g in "ifgo"])
                b_hh = torch.cat([_tensor(cell[f"h{g}"]["bias"]) for g in "ifgo"])
                getattr(self.lstm, f"weight_ih_l{layer}").copy_(w_ih)
                getattr(self.lstm, f"weight_hh_l{layer}").copy_(w_hh)
                getattr(self.lstm, f"bias_hh_l{layer}").copy_(b_hh)
                getattr(self.lstm, f"bias_ih_l{layer}").zero_()
            self.dense.weight.copy_(_tensor(params["dense"]["kernel"]).T)
            self.dense.bias.copy_(_tensor(params["dense"]["bias"]))
        return self


def build(arch: str, config: Mapping[str, Any], mean: np.ndarray, std: np.ndarray) -> nn.Module:
    """A PyTorch twin of the HAR architecture ``arch`` with settings ``config`` (fresh weights)."""
    if arch == "har-cnn":
        return TorchHarCNN(mean, std, **config)
    if arch == "har-lstm":
        return TorchHarLSTM(mean, std, **config)
    raise ValueError(f"no PyTorch twin of {arch!r}; expected 'har-cnn' or 'har-lstm'")


def inference_call(module: nn.Module):
    """``x -> probabilities`` as NumPy, under ``torch.inference_mode`` (how PyTorch is served)."""
    module.eval()

    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(module(torch.from_numpy(x)), dim=-1).numpy()

    return call


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=np.float32))
