"""eval: the repository's experiment harness (not installed), built on the installed packages.

Run from the repository root::

    python -m eval demo                                      # make demo
    python -m eval reproduce --preset mnist5k                # the powered CPU experiment
    python -m eval reproduce --preset cifar10-vgg11 --dry-run
    python -m eval run --config eval/configs/mnist5k.yaml --out results/x
    python -m eval report --out results/x

Modules, one job each: :mod:`eval.cli` (the command line), :mod:`eval.presets` (presets as data,
``eval/presets/*.yaml``), :mod:`eval.pipeline` (train, evaluate, compare), :mod:`eval.analysis`
and :mod:`eval.stats` (the comparison and its statistics, pure), :mod:`eval.report` and
:mod:`eval.pipeline_report` (Markdown, pure), :mod:`eval.plots` and :mod:`eval.figures`
(figures), :mod:`eval.provenance` (command, revision, machine). Configs, cells, resuming, the
attack registry and RobustBench live in the installed :mod:`deform_robust`.
"""
