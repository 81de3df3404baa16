"""Evaluation: loss, top-1 and top-5 over the whole validation set, exact under DDP."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..data import DataError
from ..precision import Precision
from ..val_predictions import PredictionSink


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    precision: Precision,
    device: torch.device,
    channels_last: bool = False,
    predictions: PredictionSink | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole val set, summed across ranks: exact under DDP.

    Batches are ``(x, y)`` or ``(x, y, index)``; with the index, ``predictions`` collects each
    image's result for ``val_predictions.csv``. ``prepare``: what turns a batch into the model's
    input on the device (a cached split's uint8 into normalised floats).
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for batch in loader:
        if batch is None:
            continue
        x, y, *index = batch
        x = x.to(device, non_blocking=True)
        x = precision.cast_input(prepare(x) if prepare is not None else x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x).float()
        if predictions is not None and index:
            predictions.add(index[0], y, logits)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        sums += torch.stack(
            [
                F.cross_entropy(logits, y, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=device),
            ]
        )
    du.all_reduce_sum(sums)
    loss, top1, top5, n = sums.tolist()
    model.train()
    if n == 0:
        raise DataError("no validation image could be read")
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}
