"""Training orchestration: whole runs planned, resumed and launched from a :class:`~.spec.TrainSpec`.

Harness code, kept apart from the training library (timm keeps ``train.py`` beside ``timm/``):
:mod:`fgr_defense` holds what a user drops into their own loop (``Trainer``, regularizers,
defenses, schedules, data, models); this package turns a spec into a finished run folder.

- :mod:`.spec`: ``TrainSpec`` (validated, JSON-able), its identity, ``TrainResult``,
  ``default_out_dir``.
- :mod:`.run`: ``train_from_spec`` (modes ``new``/``resume``/``auto``, the output lock).
- :mod:`.cli`: the ``deform-robust train`` command (torch-free until it runs).

``TrainSpec``, ``TrainResult`` and ``train_from_spec`` are exported by :mod:`deform_robust`
(imported on first use, so that ``deform-robust --help`` does not load torch).

Example:
    >>> from deform_robust import TrainSpec
    >>> TrainSpec(defense="fgr", weight=2, epochs=1).defense
    'FGR'
"""
