"""What a network costs per image, counted from what it executes."""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``image_size`` x ``image_size`` image.

    Counted with torch's own ``FlopCounterMode`` (which counts FLOPs = 2 x MACs of convolutions and
    matrix products) on the model as it runs in eval mode, so an implementation that does less
    (transitions that pool before their 1x1 convolution) counts less. BatchNorm, activations and
    pooling are not counted, as in torchvision's model cards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, channels, image_size, image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
