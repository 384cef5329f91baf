"""The installed ``deform-robust`` command: fast help, evaluate a user's model on a user's data, run a config."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deform_robust.cli import build_parser, main
from deform_robust.data import load_test_data
from deform_robust.models import load_entry, load_model_source, source_config, weight_files
from fgr_defense.checkpoint import save_model
from torchattacks_deform import evaluate_robustness

ROOT = Path(__file__).resolve().parents[2]


def _no_torch(code: str) -> None:
    check = "\nimport sys; print('torch' in sys.modules or 'deform_robust.runner' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code + check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", "torch or the runner was imported"


class TestHelp:
    def test_parsers_import_no_torch(self) -> None:
        _no_torch("from deform_robust.cli import build_parser; build_parser()")
        _no_torch("from eval.cli import build_parser; build_parser()")
        _no_torch("import eval.report, eval.stats, eval.analysis, eval.pipeline_report")

    @pytest.mark.parametrize("module", ["deform_robust.cli", "eval.cli", "benchmarks.cli"])
    def test_every_option_has_help_and_every_parser_examples(self, module: str) -> None:
        parser = importlib.import_module(module).build_parser()
        parsers = [("", parser)]
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parsers += [(name, p) for a in subs for name, p in a.choices.items()]
        for name, p in parsers:
            text = p.format_help()
            # an "examples:" section with a command line of this very parser ("per-example" does not count)
            section = re.search(r"^examples?:\n((?:[ \t]+\S.*(?:\n|$))+)", text, re.M)
            assert section, f"{module} {name}: no examples section in --help"
            commands = [line.strip() for line in section.group(1).splitlines()]
            assert any(re.match(re.escape(p.prog) + r"(\s|$)", c) for c in commands), \
                f"{module} {name}: no example starts with {p.prog!r}: {commands}"
            for action in p._actions:
                if action.dest != "help" and not isinstance(action, argparse._SubParsersAction):
                    assert action.help, f"{module} {name} {action.option_strings} has no help"

    def test_help_exits_zero_with_examples(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and "deform-robust evaluate --model" in text

    def test_verbose_before_and_after_the_subcommand(self) -> None:
        p = build_parser()
        assert p.parse_args(["-v", "run", "--config", "c", "--out", "o"]).verbose
        assert p.parse_args(["run", "--config", "c", "--out", "o", "-v"]).verbose
        assert not p.parse_args(["run", "--config", "c", "--out", "o"]).verbose


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory, trained_model: nn.Module,
               mnist_test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("user")
    x, y = mnist_test
    torch.save({"images": x[:40].clone(), "labels": y[:40].clone()}, d / "test.pt")
    np.savez(d / "test.npz", images=(x[:40].numpy() * 255).round().astype(np.uint8), labels=y[:40].numpy())
    save_model(trained_model, d / "ours.pt", {"name": "smallcnn16", "in_channels": 1, "num_classes": 10, "size": 28})
    torch.save(trained_model.state_dict(), d / "weights.pt")
    torch.jit.trace(trained_model, x[:2]).save(str(d / "model.ts"))
    return {"dir": d, "pt": d / "test.pt", "npz": d / "test.npz", "ours": d / "ours.pt", "weights": d / "weights.pt",
            "ts": d / "model.ts"}


class TestEvaluate:
    def test_user_pt_file_prints_clean_per_attack_and_worst_case(self, user_files: dict[str, Path],
                                                                capsys: pytest.CaptureFixture[str],
                                                                trained_model: nn.Module) -> None:
        code = main(["evaluate", "--model", str(user_files["ours"]), "--data", str(user_files["pt"]), "--eps", "0.5",
                     "--attacks", "fast", "--device", "cpu", "--no-progress", "--out", str(user_files["dir"] / "o")])
        assert code == 0
        out = capsys.readouterr().out
        header = next(line for line in out.splitlines() if "clean %" in line).split()
        assert header[:3] == ["budget", "(px)", "clean"] and header[-2:] == ["case", "%"]
        row = next(line for line in out.splitlines() if line.strip().startswith("0.5")).split()
        record = json.loads((user_files["dir"] / "o" / "robustness.json").read_text())["results"][0]
        assert float(row[1]) == pytest.approx(100 * record["clean_accuracy"], abs=0.006)
        assert float(row[-1]) == pytest.approx(100 * record["worst_case_accuracy"], abs=0.006)
        # the same numbers as the Python one-liner with the same seed
        data = torch.load(user_files["pt"], weights_only=True)
        torch.manual_seed(0)
        direct = evaluate_robustness(trained_model, data["images"], data["labels"], eps=0.5, attacks="fast",
                                     progress=False)
        assert direct.worst_case_accuracy == pytest.approx(record["worst_case_accuracy"])
        assert direct.clean_accuracy == pytest.approx(record["clean_accuracy"])

    @pytest.mark.parametrize("kind", ["weights", "ts"])
    def test_other_model_specs_load_the_same_network(self, kind: str, user_files: dict[str, Path],
                                                     trained_model: nn.Module) -> None:
        if kind == "weights":
            model = load_model_source("fgr_defense.models:SmallCNN", weights=str(user_files["weights"]),
                                    kwargs={"width": 16})
        else:
            model = load_model_source(str(user_files["ts"]))
        x = torch.rand(3, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(model(x), trained_model(x), atol=1e-5)

    @pytest.mark.parametrize("kind", ["ours", "weights", "ts"])
    def test_command_line_and_config_share_one_loader(self, kind: str, user_files: dict[str, Path]) -> None:
        """``--model SOURCE`` becomes a config entry that the harness's loader builds (sources detected by content)."""
        source, weights = {"ours": (str(user_files["ours"]), None), "ts": (str(user_files["ts"]), None),
                           "weights": ("fgr_defense.models:SmallCNN", str(user_files["weights"]))}[kind]
        cfg = source_config(source, weights=weights, kwargs={"width": 16} if kind == "weights" else None)
        assert cfg.source == {"ours": "checkpoint", "ts": "torchscript", "weights": "callable"}[kind]
        assert weight_files(cfg) == [Path(weights or source)]
        model, _ = load_entry(cfg)
        x = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model(x), load_model_source(source, weights, cfg.kwargs)(x))

    def test_npz_uint8_and_image_folder(self, user_files: dict[str, Path], tmp_path: Path) -> None:
        a, b = load_test_data(str(user_files["npz"])), load_test_data(str(user_files["pt"]))
        assert torch.allclose(a.images, b.images, atol=1 / 255) and torch.equal(a.labels, b.labels)
        from PIL import Image

        for label in (0, 1):
            (tmp_path / f"class{label}").mkdir()
            for i in range(2):
                Image.fromarray(np.full((6, 5, 3), 40 * (i + label), dtype=np.uint8)).save(
                    tmp_path / f"class{label}" / f"{i}.png")
        d = load_test_data(str(tmp_path))
        assert d.images.shape == (4, 3, 6, 5) and d.num_classes == 2 and d.labels.tolist() == [0, 0, 1, 1]

    @pytest.mark.parametrize(
        ("args", "words"),
        [(["--model", "nope.pt"], "no file at 'nope.pt'"),
         (["--model", "WEIGHTS"], "--model: 'WEIGHTS' is neither a deform-robust checkpoint nor a TorchScript file; "
                                  "for a plain state dict use --model module:callable --weights FILE"),
         (["--model", "fgr_defense.models:SmallCNN", "--weights", "TS"], "--weights: 'TS' is not a readable state dict"),
         (["--model", "TS", "--weights", "WEIGHTS"], "--weights: only used with a 'module:callable' model"),
         (["--model", "fgr_defense.models:Nope"], "has no attribute 'Nope'"),
         (["--eps", "inf"], "--eps: expected a finite number in (0, 10000]"),
         (["--eps", "0"], "--eps: expected a finite number in (0, 10000]"),
         (["--n", "0"], "--n: expected a positive integer"),
         (["--data", "missing.npz"], "no dataset named 'missing.npz'"),
         (["--device", "bogus"], "device")],
    )
    def test_bad_arguments_are_one_line_errors(self, args: list[str], words: str, user_files: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
        base = {"--model": str(user_files["ours"]), "--data": str(user_files["pt"])}
        for k, v in zip(args[::2], args[1::2]):
            base[k] = v.replace("WEIGHTS", str(user_files["weights"])).replace("TS", str(user_files["ts"]))
        words = words.replace("WEIGHTS", str(user_files["weights"])).replace("TS", str(user_files["ts"]))
        argv = ["evaluate", "--no-progress", *[t for kv in base.items() for t in kv]]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and "Traceback" not in err
