"""Small, named workarounds for third-party quirks. Each one says why it exists.

Keep every compatibility shim of ``torchattacks_deform`` here so that it can be
removed in one place when the upstream library is fixed.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

try:  # kornia >= 0.8.3 moved the grid helpers; ``kornia.utils`` now warns.
    from kornia.geometry.grid import create_meshgrid as _create_meshgrid
except ImportError:  # pragma: no cover - older kornia
    from kornia.utils import create_meshgrid as _create_meshgrid

from kornia.geometry.conversions import normalize_pixel_coordinates

# torchattacks 3.5.1 exports its base class only as ``torchattacks.attack.Attack``
# (``torchattacks.Attack`` is not in its ``__init__``). Import it from there.
from torchattacks.attack import Attack as TorchattacksAttack

__all__ = ["TorchattacksAttack", "create_meshgrid", "normalize_pixel_coordinates"]


def create_meshgrid(
    height: int, width: int, device: torch.device | None, dtype: torch.dtype
) -> torch.Tensor:
    """Pixel-coordinate meshgrid ``(1, H, W, 2)`` in ``(x, y)`` order, via kornia."""
    fn: Callable[..., Any] = _create_meshgrid
    return fn(height, width, normalized_coordinates=False, device=device, dtype=dtype)
