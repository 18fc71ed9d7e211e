from __future__ import annotations

import math

import pytest
import torch

from mm_sbert.image_features import roi_align


def _bilinear(channel: torch.Tensor, y: float, x: float) -> float:
    height, width = channel.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * channel[y_low, x_low].item()
        + hy * lx * channel[y_low, x_high].item()
        + ly * hx * channel[y_high, x_low].item()
        + ly * lx * channel[y_high, x_high].item()
    )


def reference_roi_align(feature, rois, pooled, scale, ratio, aligned):
    """A literal scalar transcription of torchvision's CPU roi_align kernel."""
    out = torch.zeros(len(rois), feature.shape[1], pooled, pooled)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        w, h = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bin_h, bin_w = h / pooled, w / pooled
        for c in range(feature.shape[1]):
            for py in range(pooled):
                for px in range(pooled):
                    total = 0.0
                    for iy in range(ratio):
                        y = sy + py * bin_h + (iy + 0.5) * bin_h / ratio
                        for ix in range(ratio):
                            x = sx + px * bin_w + (ix + 0.5) * bin_w / ratio
                            total += _bilinear(feature[int(b), c], y, x)
                    out[k, c, py, px] = total / (ratio * ratio)
    return out


@pytest.mark.parametrize("aligned", [True, False])
def test_matches_scalar_reference_including_borders(aligned):
    generator = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 3, 5, 6, generator=generator)
    rois = torch.tensor(
        [
            [0, 0.0, 0.0, 12.0, 10.0],  # whole map at scale 0.5
            [1, 1.3, 2.2, 7.9, 5.1],
            [0, -3.0, -2.0, 4.0, 3.0],  # partly outside: zero contribution beyond one pixel
            [1, 10.5, 8.5, 14.0, 12.0],  # on the bottom-right border ring
            [0, 4.0, 4.0, 4.0, 4.0],  # degenerate
        ]
    )
    expected = reference_roi_align(feature, rois, 3, 0.5, 2, aligned)
    actual = roi_align(feature, rois, 3, spatial_scale=0.5, sampling_ratio=2, aligned=aligned)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_linear_map_pools_to_bin_centre():
    # bilinear interpolation of a linear function is exact, so each bin's mean is the value at its centre
    height, width = 8, 10
    y, x = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    feature = (x + 10 * y)[None, None]
    out = roi_align(feature, [torch.tensor([[2.0, 1.0, 6.0, 5.0]])], 2, sampling_ratio=3, aligned=True)
    # aligned box in pixel-centre coordinates: x 1.5..5.5, y 0.5..4.5; bin centres x 2.5, 4.5 and y 1.5, 3.5
    expected = torch.tensor([[2.5 + 15, 4.5 + 15], [2.5 + 35, 4.5 + 35]])
    torch.testing.assert_close(out[0, 0], expected)


def test_list_of_boxes_equals_indexed_rois():
    feature = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    boxes = [torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.tensor([[1.0, 2.0, 6.0, 7.0], [0.5, 0.5, 1.5, 2.5]])]
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0], [1, 1.0, 2.0, 6.0, 7.0], [1, 0.5, 0.5, 1.5, 2.5]])
    torch.testing.assert_close(roi_align(feature, boxes, (2, 3)), roi_align(feature, rois, (2, 3)))
    assert not math.isclose(roi_align(feature, boxes, 1)[1].sum().item(), roi_align(feature, boxes, 1)[2].sum().item())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 2, sampling_ratio=0)
