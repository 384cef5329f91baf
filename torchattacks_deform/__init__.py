"""torchattacks_deform: adversarial deformations (flow attacks) as a torchattacks plugin.

Example:
    >>> import torch
    >>> from torchattacks_deform import FlowPGD, warp
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    >>> adv = FlowPGD(model, eps=1.0, alpha=0.25, steps=3)(images, labels)
    >>> adv.shape
    torch.Size([2, 1, 4, 4])
"""

from ._base import AttackInfo, FlowAttack
from .apgd import FlowAPGD
from .apgdt import FlowAPGDT
from .autoattack import FlowAutoAttack
from .es import FlowES
from .evaluate import RobustnessCurve, RobustnessReport, evaluate_robustness
from .fgsm import FlowFGSM
from .flow import (
    Warp,
    flow_norm,
    flow_smoothness_loss,
    flow_to_normalized,
    flow_to_pixels,
    normalized_to_pixels,
    pixels_to_normalized,
    project_flow,
    warp,
)
from .losses import attack_loss, dlr_loss, dlr_targeted_loss, margin_loss
from .pgd import FlowPGD
from .square import FlowSquare
from .stadv import StAdv

__version__ = "0.2.0"

__all__ = [
    "AttackInfo",
    "FlowAPGD",
    "FlowAPGDT",
    "FlowAttack",
    "FlowAutoAttack",
    "FlowES",
    "FlowFGSM",
    "FlowPGD",
    "FlowSquare",
    "RobustnessCurve",
    "RobustnessReport",
    "StAdv",
    "Warp",
    "attack_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "evaluate_robustness",
    "flow_norm",
    "flow_smoothness_loss",
    "flow_to_normalized",
    "flow_to_pixels",
    "margin_loss",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "project_flow",
    "warp",
]
