r"""``python -m benchmarks``: what the flow attacks and the regularized training steps cost.

Every figure is a **ratio to a reference measured side by side** on the same model, batch
and device, because absolute times on a shared machine are noise. The benchmark runs the
reference and the candidates of a row group in *rounds*: each round calls every function once,
in an order that rotates from round to round and reverses on odd rounds, so slow drift of the
machine's load hits reference and candidate alike. A ratio is computed **per round**
(candidate time / reference time of the same round) and reported as the median over rounds
with its spread (quartiles and min/max).

Rows (``SmallCNN`` on 28x28 MNIST-5k images, ``VGG-11`` and ``ResNet-18`` on 32x32 random
images; the timings do not depend on the pixel values):

- **FlowPGD vs torchattacks.PGD**, per step: both attacks with the same number of steps, whole
  attack divided by the steps (fixed costs included; FlowPGD pays one extra warp at the end).
- **FlowFGSM vs torchattacks.FGSM**.
- **StAdv** on a standard-trained SmallCNN: steps and time to fool 95% of the correctly
  classified images, against a plain Adam loop over ``grid_sample`` with the same loss
  (:func:`benchmarks.attacks.plain_stadv`, written without the library). The steps are found
  by a probe run that records every iterate's prediction; the timed runs use exactly those steps.
- **FlowES**: model queries per successful sample, images classified per second, and the same
  throughput ratio against a plain batched ``warp + forward`` of as many images.
- **Suite**: :class:`~torchattacks_deform.FlowAutoAttack` (a cascade: each member attacks only
  the examples still robust) against the sum of its members run separately on all the same
  examples, on the standard-trained SmallCNN: time ratio, counted model forwards and the
  worst-case robust accuracy each found (:func:`benchmarks.suite.bench_suite`).
- **Trainer steps** (:class:`~fgr_defense.trainer.Trainer.train_step` with the presets of
  :func:`~fgr_defense.defenses.build_defense`): Standard, IGR, FGR, FGR+RS, FGR+RS in the
  authors' variant, AT-PGD (7 steps), FGR+RS+AT-PGD, as ratios to the Standard step (and the
  FGR family to IGR), with the peak memory of one step.

Convention:
    - **Peak memory** is the largest increase of allocated tensor memory during one training
      step over what was allocated when it began (:func:`benchmarks.timing.peak_memory`).
    - Training steps run SGD (momentum 0.9, weight decay 5e-4) with **lr = 0**, so that many
      steps on one fixed batch cannot diverge; the optimizer's arithmetic runs all the same.
    - The regularizers use the presets' default lambdas; the weights do not change the cost.
    - Precision (``--autocast-dtype bf16``, ``--channels-last``) uses one vocabulary
      everywhere: ``Trainer(autocast_dtype=..., channels_last=...)`` for the training rows,
      ``attack.set_precision(autocast_dtype, channels_last=...)`` for the flow attacks, and
      the same autocast around the model for the references.
    - ``results/bench/bench.json`` (format :data:`benchmarks.config.FORMAT`) and ``bench.md``
      are rewritten atomically after every row group; a crash keeps the groups already
      measured (``"complete": false``). There is no resume: ratios must come from one run.

Modules: :mod:`~benchmarks.config` (settings, torch-free), :mod:`~benchmarks.cli` (command
line, torch-free), :mod:`~benchmarks.timing` (rounds, ratios, peak memory),
:mod:`~benchmarks.common` (models, data, precision wrappers), :mod:`~benchmarks.attacks`,
:mod:`~benchmarks.suite`, :mod:`~benchmarks.training` (the row groups),
:mod:`~benchmarks.report` (targets, Markdown, JSON) and :mod:`~benchmarks.driver`
(:func:`~benchmarks.driver.run_bench`). Importing this package imports no torch.
"""
