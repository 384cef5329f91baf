"""Regressions of issue 16 ("A first hour without surprises"), second part: each test fails without its fix.

1. progress you can see: the harness shows a bar per attack cell over its batches with the running
   robust accuracy, elapsed time and ETA (quiet with ``--no-progress`` or off a terminal); a short
   INFO line per cell and per evaluate_robustness call (the full dict at DEBUG); "model k/N"
2. Ctrl-C during ``deform-robust train`` writes a resumable checkpoint and exits 130 with one line
   that gives the resume command; ``--resume`` finishes the run
3. one-line errors: ``source: object`` given a string, a pickle that ``--data`` refuses, float64
   batches with a float32 model, a corrupted ``cifar-10-batches-py``, ``--download`` named only by
   the command that has it
4. robustbench imports after ``import deform_robust.robustbench`` (the ``autoattack`` alias, one place)
5. ``deform-robust train --help`` has real examples
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from deform_robust.cli import build_parser
from deform_robust.cli import main as dr_main
from deform_robust.cli import main as fgr_main
from deform_robust.config import ConfigError, load_config, parse_config
from deform_robust.data import load_test_data
from deform_robust.runner import run_config
from deform_robust.training.cli import resume_command, spec_from_args
from fgr_defense import Trainer, TrainingInterrupted, load_checkpoint
from fgr_defense.data import DatasetUnreadableError, get_dataset, load_mnist5k
from torchattacks_deform import evaluate_robustness

ROOT = Path(__file__).resolve().parents[2]


def linear(classes: int = 10, pixels: int = 784, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))


def class_means() -> nn.Module:
    """A nearest-class-mean classifier of MNIST-5k (about 80% accurate, built in a moment)."""
    x, y = load_mnist5k(train=True)
    means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(10)])
    layer = nn.Linear(784, 10)
    with torch.no_grad():
        layer.weight.copy_(means)
        layer.bias.copy_(-0.5 * (means ** 2).sum(1))
    return nn.Sequential(nn.Flatten(), layer)


def grid(n: int = 16, batch_size: int = 4) -> Any:
    return parse_config({"name": "p", "device": "cpu", "checks": {"enabled": False},
                         "data": {"dataset": "mnist5k", "n": n, "batch_size": batch_size},
                         "models": [{"name": "a", "source": "object", "obj": class_means()},
                                    {"name": "b", "source": "object", "obj": linear(seed=1)}],
                         "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]})


class EagerBar(tqdm):  # type: ignore[type-arg]
    """tqdm that draws every update (the default skips updates within 0.1 s of the last one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["mininterval"] = 0
        super().__init__(*args, **kwargs)


# 1 ----------------------------------------------------------------------------------------------
class TestProgress:
    def test_attack_cells_show_batches_running_robust_accuracy_and_eta(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        import deform_robust.runner as runner

        monkeypatch.setattr(runner, "tqdm", EagerBar)
        res = run_config(grid(), tmp_path, progress=True)
        assert res is not None
        err = capsys.readouterr().err
        assert re.search(r"FlowFGSM @ 0\.5: .*\d+/\d+ \[\d\d:\d\d<\d\d:\d\d", err), err  # batches, elapsed<ETA
        shown = [float(v) for v in re.findall(r"robust ~(\d+\.\d)%", err)]
        assert shown, err
        final = [100 * c["robust_acc"] for c in res["cells"]]
        assert any(abs(s - f) < 0.06 for s in shown for f in final)  # the last batch's estimate is the result
        assert re.search(r"model 2/2: b\|FlowFGSM", err) and re.search(r"/4 \[", err)  # the cell bar: 4 cells

    def test_evaluate_robustness_counts_attacks_and_batches_with_running_accuracy(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        from torchattacks_deform import FlowFGSM, FlowPGD, evaluate_robustness

        model = class_means()
        x, y = load_mnist5k(train=False)
        attacks = {"FGSM": FlowFGSM(model, eps=0.5), "PGD": FlowPGD(model, eps=0.5, steps=2)}
        report = evaluate_robustness(model, x[:24], y[:24], eps=0.5, attacks=attacks, batch_size=8, progress=True)
        err = capsys.readouterr().err
        assert re.search(r"evaluate_robustness 0\.5 px: .*6/6 \[\d\d:\d\d<\d\d:\d\d", err), err  # 3 batches x 2
        shown = [float(v) for v in re.findall(r"worst-case robust (\d+\.\d)% of 24", err)]
        assert shown and abs(shown[-1] - 100 * report.worst_case_accuracy) < 0.06, err
        evaluate_robustness(model, x[:24], y[:24], eps=0.5, attacks=attacks, batch_size=8)  # None: not a terminal
        assert "evaluate_robustness" not in capsys.readouterr().err

    def test_quiet_without_progress_or_off_a_terminal(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run_config(grid(), tmp_path / "off", progress=False) is not None
        assert run_config(grid(), tmp_path / "auto", progress=None) is not None  # pytest's stderr is no terminal
        err = capsys.readouterr().err
        assert "robust ~" not in err and "cell/s" not in err and "batch/s" not in err and "%|" not in err, err

    def test_no_progress_flag_of_run_and_zoo(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import deform_robust.runner as runner
        import deform_robust.zoo as zoo

        seen: list[Any] = []
        monkeypatch.setattr(runner, "run_config", lambda *a, **k: seen.append(k.get("progress")))
        monkeypatch.setattr(zoo, "run_zoo", lambda *a, **k: seen.append(k.get("progress")) or [])
        cfg = tmp_path / "c.yaml"
        cfg.write_text("models: [{name: m, source: callable, callable: 'fgr_defense.models:SmallCNN'}]\n"
                       "attacks: [{family: FlowFGSM, budgets: [0.5]}]\n")
        for extra in ([], ["--no-progress"]):
            assert dr_main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), *extra]) == 0
            assert dr_main(["zoo", "--dataset", "cifar10", "--models", "Standard", "--data-root", str(tmp_path),
                            *extra]) == 0
        assert seen == [None, None, False, False]

    def test_one_short_info_line_per_cell_and_per_budget(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG):
            run_config(grid(), tmp_path, progress=False)
            x, y = load_test_data("mnist5k", n=8).images, load_test_data("mnist5k", n=8).labels
            evaluate_robustness(class_means(), x, y, eps=0.5, attacks="fast")
        info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
                and r.name in ("deform_robust.runner", "torchattacks_deform.evaluate")]
        assert all(len(m) < 300 for m in info), max(info, key=len)
        assert "model 1/2: a (2 cell(s) to run)" in info and "model 2/2: b (2 cell(s) to run)" in info
        assert any(m.startswith("evaluate_robustness: 8 examples, Linf eps 0.5 px: clean") for m in info)
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "evaluate_robustness" in
                 r.getMessage()]
        assert any("'robust_accuracy'" in m for m in debug)  # the full dict is still there, at DEBUG

    def test_pipeline_counts_models_while_training(self, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
        import eval.pipeline as pipeline
        from eval.presets import load_preset

        class Result:
            history: list[dict[str, Any]] = []
            checkpoint, train_s, wall_s, cached = tmp_path / "model.pt", 0.0, 0.0, True

        monkeypatch.setattr(pipeline, "train_from_spec", lambda *a, **k: Result())
        preset = load_preset("tiny")
        with caplog.at_level(logging.INFO, logger="eval.pipeline"):
            trained = pipeline._train_all(preset, tmp_path, "cpu", progress=False)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train model ")]
        assert len(lines) == len(trained) > 1
        assert lines[0].startswith(f"train model 1/{len(trained)}: ") and \
            lines[-1].startswith(f"train model {len(trained)}/{len(trained)}: ")


# 2 ----------------------------------------------------------------------------------------------
class SigintAt(Dataset):  # type: ignore[type-arg]
    """A dataset that sends this process SIGINT while its ``at``-th item is fetched (once)."""

    def __init__(self, base: TensorDataset, at: int) -> None:
        self.base, self.at, self.calls = base, at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        self.calls += 1
        if self.calls == self.at:
            # Never let a real KeyboardInterrupt reach pytest: only signal while fit's handler is in place.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "fit installed no handler"
            signal.raise_signal(signal.SIGINT)
        return self.base[i]


class TestCtrlC:
    def _fit(self, data: Dataset, out: Path, resume: bool = False) -> Trainer:  # type: ignore[type-arg]
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        kwargs: dict[str, Any] = dict(device="cpu", progress=False, seed=5, out_dir=out)
        trainer = Trainer.resume(out / "model.pt", model, opt, **kwargs) if resume else Trainer(model, opt, **kwargs)
        trainer.fit(DataLoader(data, batch_size=8, shuffle=True), epochs=2)  # 6 steps per epoch
        return trainer

    def test_sigint_checkpoints_after_the_step_and_resume_equals_uninterrupted(self, tmp_path: Path) -> None:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        x, y = load_test_data("mnist5k", n=48).images, load_test_data("mnist5k", n=48).labels
        data = TensorDataset(x, y)
        ref = self._fit(data, tmp_path / "ref")
        with pytest.raises(TrainingInterrupted) as info:
            self._fit(SigintAt(data, at=8 * 6 + 8 * 2 + 3), tmp_path / "cut")  # during step 3 of epoch 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        assert isinstance(info.value, KeyboardInterrupt)
        assert info.value.checkpoint == tmp_path / "cut" / "model.pt"
        state = load_checkpoint(tmp_path / "cut" / "model.pt")["trainer"]
        assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 9)
        resumed = self._fit(data, tmp_path / "cut", resume=True)
        assert resumed.global_step == ref.global_step == 12
        for (k, a), b in zip(ref.module.state_dict().items(), resumed.module.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)

    def test_resume_command(self) -> None:
        argv = ["-v", "train", "--defense", "FGR", "--out", "runs/a b"]
        assert resume_command("deform-robust train", argv) == "deform-robust train --defense FGR --out 'runs/a b' --resume"
        assert resume_command("p train", ["train", "--resume"]) == "p train --resume"

    @pytest.mark.slow
    def test_cli_sigint_after_the_first_epoch_then_resume(self, tmp_path: Path) -> None:
        out = tmp_path / "run"
        args = ["train", "--defense", "FGR", "--weight", "1", "--epochs", "5", "--limit", "640", "--batch-size",
                "32", "--no-val", "--no-progress", "--log-level", "WARNING", "--out", str(out)]  # 20 steps/epoch
        cmd = [sys.executable, "-m", "deform_robust.cli"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        sent = False
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if (out / "model.pt").is_file():  # the first epoch is written
                    proc.send_signal(signal.SIGINT)
                    sent = True
                    break
                time.sleep(0.05)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert sent, f"the run ended before the first checkpoint: {err}"
        assert proc.returncode == 130, err
        assert "Traceback" not in err and sum(x.startswith("interrupted") for x in err.splitlines()) == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"interrupted: checkpoint at {out / 'model.pt'}; resume with: deform-robust train "), line
        state = load_checkpoint(out / "model.pt")["trainer"]
        assert state["epoch"] >= 1 and state["global_step"] < 100
        again = shlex.split(line.split("resume with: ", 1)[1])
        assert again[:2] == ["deform-robust", "train"] and again[-1] == "--resume"
        done = subprocess.run(cmd + again[1:], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        final = load_checkpoint(out / "model.pt")
        assert final["trainer"]["global_step"] == 100 and final["meta"]["complete"]
        log = json.loads((out / "log.json").read_text())
        assert [r["epoch"] for r in log["epochs"]] == [1, 2, 3, 4, 5]
        assert [r["global_step"] for r in log["epochs"]] == [20, 40, 60, 80, 100]


# 3 ----------------------------------------------------------------------------------------------
class Opaque:
    """A class that torch.load(weights_only=True) refuses to unpickle."""


class TestOneLineErrors:
    def test_source_object_given_a_string(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        raw = {"models": [{"name": "m", "source": "object", "obj": "fgr_defense.models:SmallCNN"}],
               "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]}
        with pytest.raises(ConfigError, match=r"models\[0\] \(m\)\.obj: source 'object' expects an nn\.Module "
                                              r"object in 'obj' \(Python API only\), got str 'fgr_defense"):
            parse_config(raw)
        cfg = tmp_path / "c.yaml"
        cfg.write_text("models: [{name: m, source: object, obj: 'fgr_defense.models:SmallCNN'}]\n"
                       "attacks: [{family: FlowFGSM, budgets: [0.5]}]\n")
        with pytest.raises(ConfigError, match="source: callable"):
            load_config(cfg)
        assert dr_main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ".obj: source 'object' expects an nn.Module" in err

    def test_a_pickle_that_data_refuses(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        bad = tmp_path / "bad.pt"
        torch.save({"images": torch.rand(4, 1, 28, 28), "labels": torch.zeros(4, dtype=torch.long),
                    "extra": Opaque()}, bad)
        plain = tmp_path / "plain.pt"
        plain.write_bytes(pickle.dumps({"images": Opaque()}, protocol=2))
        for path in (bad, plain):
            with pytest.raises(ValueError, match=r"^--data .*is not a tensor file of images and labels"):
                load_test_data(str(path))
        status = dr_main(["evaluate", "--model", "fgr_defense.models:SmallCNN", "--data", str(bad)])
        err = capsys.readouterr().err
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert "--data" in err and "not a tensor file of images and labels" in err and "Opaque" in err

    def test_float64_batches_with_a_float32_model(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", progress=False, seed=0)
        x, y = torch.rand(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
        out = trainer.train_step(x, y)
        assert out["output"].dtype == torch.float32 and torch.isfinite(out["loss"])
        assert x.dtype == torch.float64  # the caller's batch is not touched
        history = trainer.fit(DataLoader(TensorDataset(x, y), batch_size=4), epochs=1)
        assert history[-1]["train_loss"] > 0
        assert trainer.evaluate(DataLoader(TensorDataset(x, y), batch_size=4))["n"] == 8

    @staticmethod
    def _corrupted(tmp_path: Path) -> Path:
        folder = tmp_path / "data" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            (folder / name).write_bytes(b"not a pickle")
        return tmp_path / "data"

    def test_corrupted_cifar_folder_says_so(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        root = self._corrupted(tmp_path)
        with pytest.raises(DatasetUnreadableError, match="cifar-10-batches-py' is there but corrupted or unreadable"):
            get_dataset("cifar10", train=False, root=root)
        with pytest.raises(ValueError, match="corrupted or unreadable") as info:
            load_test_data("cifar10", str(root))
        assert "not under data root" not in str(info.value) and "--download" not in str(info.value)
        assert dr_main(["evaluate", "--model", "fgr_defense.models:SmallCNN", "--data", "cifar10",
                        "--data-root", str(root)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "corrupted or unreadable" in err, err
        assert fgr_main(["train", "--dataset", "cifar10", "--data-root", str(root), "--no-progress", "--epochs", "1",
                         "--out", str(tmp_path / "t")]) == 1
        assert "corrupted or unreadable" in capsys.readouterr().err

    def test_download_is_named_only_where_the_flag_exists(self, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
        empty = tmp_path / "empty"
        empty.mkdir()
        parser = build_parser()
        subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
        has = {name: "--download" in p.format_help() for name, p in subs.items()}
        assert has == {"train": True, "evaluate": False, "run": False, "zoo": False}
        for root in ([], ["--data-root", str(empty)]):
            assert dr_main(["evaluate", "--model", "fgr_defense.models:SmallCNN", "--data", "cifar10", *root]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "--download" not in err, err
            assert ("--data-root" in err) if not root else ("not under data root" in err)
        with pytest.raises(FileNotFoundError) as info:  # what run and zoo show (the runner loads the same way)
            load_test_data("cifar100", str(empty))
        assert "--download" not in str(info.value) and "cifar-100-python/" in str(info.value)


# 4 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["deform_robust.robustbench", "deform_robust"])
def test_robustbench_imports_after_deform_robust_robustbench(first: str) -> None:
    code = f"import {first}\n" + """
import sys
assert "autoattack" not in sys.modules and "pyautoattack" not in sys.modules  # nothing imported yet
import robustbench
from robustbench.eval import benchmark
import autoattack, autoattack.state, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
x = torch.rand(4, 1, 4, 4)
y = model(x).argmax(1)
# robustbench.eval's own call: the original autoattack's keywords, bs=, and x_adv back
aa = autoattack.AutoAttack(model, norm="Linf", eps=0.01, version="custom", attacks_to_run=["apgd-ce"],
                           device="cpu", log_path=None)
aa.apgd.n_iter, aa.apgd.n_restarts = 2, 1
adv = aa.run_standard_evaluation(x, y, bs=2, state_path=None)
assert isinstance(adv, torch.Tensor) and adv.shape == x.shape
print("ok", autoattack.state.EvaluationState.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok EvaluationState"


def test_the_autoattack_workaround_lives_in_one_place() -> None:
    for package in ("deform_robust", "fgr_defense", "torchattacks_deform"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if path.name != "_autoattack_shim.py":
                assert not re.search(r"import_module\(\"pyautoattack|import pyautoattack|sys\.modules\[?.*autoattack",
                                     text), path
            if re.search(r"^\s*(import robustbench|from robustbench)", text, re.M) or "import_module(\"robustbench" in text:
                assert path.name == "robustbench.py" and package == "deform_robust", path
                assert text.index("_autoattack_shim.install()") < text.index("robustbench.utils\")"), path
    import deform_robust.robustbench as rb

    assert "install" in inspect.getsource(rb.import_robustbench_utils)


# 5 ----------------------------------------------------------------------------------------------
def test_train_help_examples_parse_and_validate() -> None:
    parser = build_parser()
    train = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["train"]
    text = train.format_help()
    lines = text.split("\nexamples:\n", 1)[1].splitlines()
    commands = [line.strip() for line in lines if line.strip().startswith("deform-robust train ")]
    assert len(commands) >= 2, text
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command == "train"
        spec_from_args(args)  # every value is valid (TrainSpec validates them all)
    assert any("--resume" in c for c in commands)


@pytest.fixture(autouse=True)
def _no_stray_sigint_handler() -> Iterator[None]:
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
