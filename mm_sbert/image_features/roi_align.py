"""RoIAlign (He et al., Mask R-CNN) in plain torch, with torchvision.ops.roi_align's sampling and boundary rules."""

from __future__ import annotations

import torch


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Bilinearly pool a fixed-size grid of features from each box of a feature map.

    Matches ``torchvision.ops.roi_align`` for a positive ``sampling_ratio`` (its adaptive ``<= 0`` mode gives each
    box a different number of samples, which does not vectorise, and is not supported): every output bin averages
    ``sampling_ratio ** 2`` bilinear samples at regularly spaced points; points more than one pixel outside the map
    contribute zero, points on the border ring are clamped to the edge.

    Args:
        input: ``[B, C, H, W]`` feature map.
        boxes: ``[K, 5]`` rows of ``(batch_index, x1, y1, x2, y2)``, or a list of ``[K_i, 4]`` boxes per image.
        output_size: ``(height, width)`` of the pooled grid, or one int for both.
        spatial_scale: multiplies box coordinates into feature-map coordinates (e.g. ``1 / 32``).
        sampling_ratio: samples per bin along each axis.
        aligned: shift boxes by half a pixel so that continuous coordinates map to pixel centres (as torchvision).

    Returns:
        ``[K, C, output_height, output_width]``.
    """
    if input.ndim != 4:
        raise ValueError(f"roi_align expects a [B, C, H, W] feature map, got shape {tuple(input.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1 (the adaptive mode is not supported), got {sampling_ratio}")
    rois = _as_rois(boxes, input)
    pooled_h, pooled_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = input.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return input.new_zeros((0, channels, pooled_h, pooled_w))

    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    # sample j of bin p sits at start + (p * s + j + 0.5) * bin / s
    steps_y = (torch.arange(pooled_h * sampling_ratio, device=input.device, dtype=rois.dtype) + 0.5) / sampling_ratio
    steps_x = (torch.arange(pooled_w * sampling_ratio, device=input.device, dtype=rois.dtype) + 0.5) / sampling_ratio
    ys = y1[:, None] + steps_y[None] * (roi_h / pooled_h)[:, None]
    xs = x1[:, None] + steps_x[None] * (roi_w / pooled_w)[:, None]

    y_low, y_high, ly, valid_y = _axis_weights(ys, height)
    x_low, x_high, lx, valid_x = _axis_weights(xs, width)
    hy, hx = 1 - ly, 1 - lx

    feature = input.permute(0, 2, 3, 1)  # [B, H, W, C]: one gather per corner returns channels last
    batch = rois[:, 0].long()[:, None, None]
    yl, yh = y_low[:, :, None], y_high[:, :, None]
    xl, xh = x_low[:, None, :], x_high[:, None, :]
    weight = lambda wy, wx: (wy[:, :, None] * wx[:, None, :]).unsqueeze(-1)  # noqa: E731
    values = (
        weight(hy, hx) * feature[batch, yl, xl]
        + weight(hy, lx) * feature[batch, yl, xh]
        + weight(ly, hx) * feature[batch, yh, xl]
        + weight(ly, lx) * feature[batch, yh, xh]
    )
    values = values * (valid_y[:, :, None] & valid_x[:, None, :]).unsqueeze(-1)
    values = values.view(num_rois, pooled_h, sampling_ratio, pooled_w, sampling_ratio, channels).mean(dim=(2, 4))
    return values.permute(0, 3, 1, 2).contiguous()


def _axis_weights(coords: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low / high neighbour index, the fraction towards high, and validity, for sample coordinates on one axis."""
    valid = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low.to(coords.dtype))
    return low, high, frac, valid


def _as_rois(boxes: torch.Tensor | list[torch.Tensor], input: torch.Tensor) -> torch.Tensor:
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != input.shape[0]:
            raise ValueError(f"roi_align got boxes for {len(boxes)} images but a feature map of {input.shape[0]}")
        parts = []
        for index, image_boxes in enumerate(boxes):
            image_boxes = torch.as_tensor(image_boxes, dtype=input.dtype, device=input.device).reshape(-1, 4)
            parts.append(torch.cat([image_boxes.new_full((len(image_boxes), 1), index), image_boxes], dim=1))
        return torch.cat(parts) if parts else input.new_zeros((0, 5))
    rois = torch.as_tensor(boxes, dtype=input.dtype, device=input.device)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"roi_align expects boxes as [K, 5] (batch_index, x1, y1, x2, y2) or a list of [K_i, 4], got "
            f"shape {tuple(rois.shape)}"
        )
    return rois
