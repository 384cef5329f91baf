"""TrainSpec / train_from_spec (new, resume, auto), the thin CLI over them, and a fast ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deform_robust import TrainSpec, train_from_spec
from deform_robust.cli import build_parser, main
from deform_robust.training.cli import add_train_arguments, run_train, spec_from_args
from fgr_defense import Schedule, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = dict(limit=32, val_limit=32, batch_size=16, epochs=1, device="cpu", progress=False)


def tiny(**changes: object) -> TrainSpec:
    return TrainSpec(**{**TINY, **changes})  # type: ignore[arg-type]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


class TestSpec:
    def test_defaults_roundtrip_and_validation(self) -> None:
        spec = TrainSpec(defense="fgr", dataset="mnist5k")
        assert spec.defense == "FGR" and spec.lam == 100.0 and spec.weight is None  # the default lambda, explicit
        assert TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        custom = TrainSpec(schedule={"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "epochs": 3,
                                     "momentum": 0.9, "milestones": [2]})
        assert isinstance(custom.schedule, Schedule) and custom.training_schedule().milestones == (2,)
        assert TrainSpec.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
        with pytest.raises(ValueError, match=r"spec: unknown keys \['lamda'\]"):
            TrainSpec.from_dict({"lamda": 3})
        with pytest.raises(ValueError, match=r"schedule.lr: expected a finite number in \(0, 10\]"):
            TrainSpec(schedule={"optimizer": "sgd", "lr": 0.0, "batch_size": 32, "epochs": 3})
        with pytest.raises(ValueError, match="schedule: the authors' public code has settings for cifar10/cifar100"):
            TrainSpec(schedule="authors")
        assert TrainSpec(dataset="cifar10", data_root="data", schedule="authors").training_schedule() == Schedule(
            "authors", "sgd", 0.01, 128, 80, 0.9, 5e-4, (40, 60), 0.1)  # the authors' utils/settings.py
        with pytest.raises(ValueError, match="lam, weight: give one of them"):
            TrainSpec(defense="FGR", lam=100, weight=1.0)
        with pytest.raises(ValueError, match="variant: only the FGR defenses"):
            TrainSpec(defense="IGR", variant="authors")

    def test_identity(self) -> None:
        base = tiny(defense="FGR+RS", weight=5.0)
        assert base.identity() == replace(base, epochs=4, device="auto", workers=2, progress=True,
                                          checkpoint_every=3, val_limit=None, download=True).identity()
        for change in [dict(limit=33), dict(seed=1), dict(lr=0.01), dict(pipeline="authors"), dict(augment=False),
                       dict(variant="authors"), dict(grad_clip=1.0), dict(keep_best=True), dict(sigma=0.2)]:
            assert base.identity() != replace(base, **change).identity(), change
        best = replace(base, keep_best=True)  # the validation subset chooses best.pt
        assert best.identity() != replace(best, val_limit=16).identity()
        # the same schedule spelled as a preset with overrides or as a custom schedule is the same run
        as_custom = replace(base, schedule=base.training_schedule().replace(name="mine"), lr=None, batch_size=None)
        assert as_custom.identity() == base.identity()


class TestModes:
    def test_new_refuses_an_existing_run_and_resume_continues(self, tmp_path: Path) -> None:
        spec = tiny(defense="FGR", weight=2.0)
        first = train_from_spec(spec, tmp_path)
        assert first.checkpoint == tmp_path / "model.pt" and not first.cached and len(first.history) == 1
        assert first.wall_s > 0 and first.train_s > 0
        with pytest.raises(FileExistsError, match="already holds a checkpoint; pass --resume"):
            train_from_spec(spec, tmp_path)
        more = train_from_spec(replace(spec, epochs=2), tmp_path, mode="resume")
        assert [r["epoch"] for r in more.history] == [1, 2] and more.history[0] == first.history[0]
        done = train_from_spec(replace(spec, epochs=2), tmp_path, mode="resume")
        assert done.cached and done.history == more.history
        with pytest.raises(ValueError, match="already has 2 epochs, more than the 1 given"):
            train_from_spec(spec, tmp_path, mode="resume")
        with pytest.raises(ValueError, match=r"different settings \(stored vs given\): limit: stored 32, given 16; "
                                             r"seed: stored 0, given 3"):
            train_from_spec(replace(spec, limit=16, seed=3, epochs=2), tmp_path, mode="resume")
        with pytest.raises(FileNotFoundError, match="resume: no checkpoint at"):
            train_from_spec(spec, tmp_path / "empty", mode="resume")

    def test_resume_equals_uninterrupted(self, tmp_path: Path) -> None:
        spec = tiny(defense="FGR+RS", weight=2.0, epochs=2)
        straight = train_from_spec(spec, tmp_path / "a")
        train_from_spec(replace(spec, epochs=1), tmp_path / "b")
        resumed = train_from_spec(spec, tmp_path / "b", mode="resume")
        for k, v in weights(straight.model_path).items():
            assert torch.equal(v, weights(resumed.model_path)[k]), k

    def test_auto_reuses_resumes_and_retrains(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        spec = tiny(epochs=2)
        first = train_from_spec(replace(spec, epochs=1), tmp_path, mode="auto")  # nothing there: trains
        resumed = train_from_spec(spec, tmp_path, mode="auto")  # same identity, fewer epochs: continues
        assert not resumed.cached and resumed.history[0] == first.history[0] and len(resumed.history) == 2
        stamp = (tmp_path / "model.pt").stat().st_mtime_ns
        cached = train_from_spec(replace(spec, workers=0, device="cpu"), tmp_path, mode="auto")
        assert cached.cached and cached.history == resumed.history
        assert (tmp_path / "model.pt").stat().st_mtime_ns == stamp  # nothing was written
        with caplog.at_level(logging.WARNING, logger="fgr_defense"):
            other = train_from_spec(replace(spec, seed=5), tmp_path, mode="auto")
        assert "seed: stored 0, given 5" in caplog.text and "training from scratch" in caplog.text
        assert not other.cached and len(other.history) == 2
        assert load_checkpoint(tmp_path / "model.pt")["meta"]["identity"]["seed"] == 5
        (tmp_path / "model.pt").write_bytes(b"")  # unreadable: train again
        again = train_from_spec(replace(spec, seed=5), tmp_path, mode="auto")
        assert not again.cached and len(again.history) == 2

    def test_keep_best_returns_best_pt(self, tmp_path: Path) -> None:
        result = train_from_spec(tiny(epochs=2, keep_best=True), tmp_path)
        assert result.checkpoint == tmp_path / "best.pt" and result.model_path == tmp_path / "model.pt"
        best = load_checkpoint(result.checkpoint)["meta"]["best"]
        accs = [r["val_acc"] for r in result.history]
        assert best["val_acc"] == max(accs) and best["epoch"] == accs.index(max(accs)) + 1
        assert train_from_spec(tiny(epochs=2, keep_best=True), tmp_path, mode="auto").cached
        (tmp_path / "best.pt").unlink()
        assert not train_from_spec(tiny(epochs=2, keep_best=True), tmp_path, mode="auto").cached

    def test_bad_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="mode: expected one of"):
            train_from_spec(tiny(), tmp_path, mode="overwrite")
        with pytest.raises(TypeError, match="spec: expected a TrainSpec"):
            train_from_spec({"dataset": "mnist5k"}, tmp_path)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="device: expected 'auto'"):
            train_from_spec(tiny(device="bogus"), tmp_path)
        assert not list(tmp_path.iterdir())


class TestCommandLine:
    ARGS = ["train", "--defense", "FGR", "--weight", "2", "--epochs", "1", "--limit", "32", "--val-limit", "32",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--log-level", "WARNING"]

    def test_the_cli_is_a_thin_wrapper_over_train_from_spec(self, tmp_path: Path) -> None:
        args = build_parser().parse_args([*self.ARGS, "--out", str(tmp_path / "cli")])
        spec = spec_from_args(args)
        assert spec == tiny(defense="FGR", weight=2.0)
        assert main([*self.ARGS, "--out", str(tmp_path / "cli")]) == 0
        direct = train_from_spec(spec, tmp_path / "api")
        for k, v in weights(direct.checkpoint).items():
            assert torch.equal(v, weights(tmp_path / "cli" / "model.pt")[k]), k
        meta = load_checkpoint(tmp_path / "cli" / "model.pt")["meta"]
        assert TrainSpec.from_dict(meta["spec"]) == spec and meta["identity"] == spec.identity()

    def test_custom_schedule_options(self) -> None:
        args = build_parser().parse_args(["train", "--dataset", "cifar10", "--data-root", "d", "--schedule", "paper",
                                          "--milestones", "5,9", "--momentum", "0.5"])
        sched = spec_from_args(args).training_schedule()
        assert (sched.milestones, sched.momentum, sched.lr, sched.epochs) == ((5, 9), 0.5, 0.1, 80)

    def test_another_console_script_can_mount_train(self, tmp_path: Path) -> None:
        parser = argparse.ArgumentParser(prog="deform-robust")
        sub = parser.add_subparsers(dest="command", required=True)
        add_train_arguments(sub.add_parser("train")).set_defaults(handler=run_train)
        args = parser.parse_args([*self.ARGS, "--out", str(tmp_path / "x")])
        assert args.handler(args) == 0 and (tmp_path / "x" / "model.pt").is_file()

    def test_verbose_before_and_after_the_command(self) -> None:
        parser = build_parser()
        assert parser.parse_args(["train"]).verbose is False
        assert parser.parse_args(["-v", "train"]).verbose is True
        assert parser.parse_args(["train", "-v"]).verbose is True
        assert parser.parse_args(["train", "--verbose"]).verbose is True

    def test_every_option_has_help_and_the_help_has_examples(self) -> None:
        parser = build_parser()
        train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
        for action in [*parser._actions, *train._actions]:
            assert action.help or isinstance(action, argparse._SubParsersAction), action.option_strings
        for text in (parser.format_help(), train.format_help()):
            assert "examples:" in text and text.count("deform-robust train") >= 1
        assert train.format_help().count("deform-robust train") >= 4


def test_building_the_parser_imports_no_torch() -> None:
    code = ("import sys; from deform_robust.cli import build_parser; build_parser().format_help(); "
            "import fgr_defense; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', "
            "'numpy', 'torchattacks', 'torchattacks_deform')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_runs_without_torch(argv: list[str]) -> None:
    code = ("import runpy, sys; sys.argv = ['deform-robust', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('deform_robust.cli', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout and "--defense" in out.stdout
