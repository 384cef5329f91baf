"""fgr_defense: drop-in gradient-regularized and adversarial training against deformations.

Example:
    >>> import torch
    >>> from fgr_defense import FGR, Trainer
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> trainer = Trainer(model, opt, regularizer=FGR(1.0, sigma=0.1), device="cpu", progress=False, seed=0)
    >>> out = trainer.train_step(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> float(out["loss"]) == float(out["task_loss"] + out["reg_loss"])
    True
"""

from .checkpoint import load_checkpoint, load_model, save_model
from .data import dataset_info, get_dataset, load_mnist5k
from .models import SmallCNN, build_model, resnet18, vgg11
from .presets import (
    DEFENSES,
    PAPER_LAMBDAS,
    Defense,
    Schedule,
    build_defense,
    default_out_dir,
    get_schedule,
    resolve_defense_name,
)
from .regularizers import (
    FGR,
    IGR,
    GradientRegularizer,
    RegularizerOutput,
    gradient_penalty,
    paper_lambda_to_weight,
    paper_sigma_to_pixels,
    per_example_cross_entropy,
)
from .trainer import NonFiniteLossError, Trainer
from .transforms import (
    Additive,
    Affine,
    Flow,
    MaskedAdditive,
    Multiplicative,
    Transform,
    affine_flow,
)

__version__ = "0.1.0"

__all__ = [
    "DEFENSES",
    "FGR",
    "IGR",
    "PAPER_LAMBDAS",
    "Additive",
    "Affine",
    "Defense",
    "Flow",
    "GradientRegularizer",
    "MaskedAdditive",
    "Multiplicative",
    "NonFiniteLossError",
    "RegularizerOutput",
    "Schedule",
    "SmallCNN",
    "Trainer",
    "Transform",
    "affine_flow",
    "build_defense",
    "build_model",
    "dataset_info",
    "default_out_dir",
    "get_dataset",
    "get_schedule",
    "gradient_penalty",
    "load_checkpoint",
    "load_mnist5k",
    "load_model",
    "paper_lambda_to_weight",
    "paper_sigma_to_pixels",
    "per_example_cross_entropy",
    "resnet18",
    "resolve_defense_name",
    "save_model",
    "vgg11",
]
