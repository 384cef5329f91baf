"""eval: a RobustBench-style harness that runs model zoos against the deformation attack suite.

Run from the repository root::

    python -m eval run --config eval/configs/mnist5k.yaml --out results/mnist5k
    python -m eval zoo --dataset cifar10 --threat-model Linf --models Standard --model-dir models/
    python -m eval report --out results/mnist5k
    python -m eval demo
    torchrun --nproc-per-node 2 -m eval run --config ... --out ...   # cells sharded over ranks

See :mod:`eval.config` for the config schema, :mod:`eval.runner` for how cells, resuming,
seeds and the worst case work, and :mod:`eval.checks` for the gradient-masking checks.
"""

__version__ = "0.1.0"
