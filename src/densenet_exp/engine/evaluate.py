"""Evaluation: loss, top-1 and top-5 over the whole validation set, exact under DDP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..data import DataError, DeviceBatches
from ..precision import Precision
from ..val_predictions import PredictionSink
from .helpers import model_input


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: DeviceBatches,
    precision: Precision,
    channels_last: bool = False,
    predictions: PredictionSink | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole val set, summed across ranks: exact under DDP.

    With the images' indices in the batches, ``predictions`` collects each image's result for
    ``val_predictions.csv``.
    """
    model.eval()
    device = batches.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for x, y, index, _ in batches.epoch():
        with precision.autocast():
            logits = model(model_input(x, precision, channels_last)).float()
        if predictions is not None and index is not None:
            predictions.add(index, y, logits)
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
