"""Reliability of training: one test (or more) per item of the issue, asserting the clear error or the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator
from urllib.error import URLError

import pytest
import torch
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deform_robust.cli import main
from fgr_defense import (
    FGR,
    IGR,
    Affine,
    Flow,
    GradientRegularizer,
    MaskedAdditive,
    NonFiniteLossError,
    Trainer,
    derive_seed,
    get_dataset,
    load_checkpoint,
    load_model,
    resolve_device,
    save_model,
    slugify,
)
from fgr_defense.data import load_mnist5k
from fgr_defense.models import SmallCNN

ARCH = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    x, y = load_mnist5k(train=True)
    return TensorDataset(x[:96], y[:96])


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(width=4)


def make_trainer(model: nn.Module, lr: float = 0.05, **kwargs: Any) -> Trainer:
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("progress", False)
    kwargs.setdefault("seed", 0)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), **kwargs)


def run_cli(*args: str) -> int:
    return main(["train", "--no-progress", "--log-level", "WARNING", *args])


# ---------------------------------------------------------------------------------------------
# 1-2. NaN/inf gradients with a finite loss; what the error says about the kept checkpoint
class NaNGradAfter(torch.autograd.Function):
    """Identity forward; from call ``n`` on, the backward returns NaN (a finite loss, a NaN gradient)."""

    calls = 0
    start = 10**9

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        NaNGradAfter.calls += 1
        ctx.poison = NaNGradAfter.calls > NaNGradAfter.start
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("nan") if ctx.poison else grad


class PoisonedGrad(nn.Module):
    def __init__(self, start: int) -> None:
        super().__init__()
        self.net = small_model()
        NaNGradAfter.calls, NaNGradAfter.start = 0, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NaNGradAfter.apply(self.net(x))


class TestNonFiniteGradients:
    def test_a_nan_gradient_skips_the_step_and_keeps_a_finite_checkpoint(self, data: TensorDataset,
                                                                         tmp_path: Path) -> None:
        model = PoisonedGrad(start=8)  # forward 9 = epoch 2, step 3 (6 steps per epoch)
        trainer = make_trainer(model, out_dir=tmp_path, checkpoint_every=1)
        before: list[torch.Tensor] = []
        step = trainer.train_step

        def recording_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            before[:] = [p.detach().clone() for p in model.parameters()]
            return step(x, y)

        trainer.train_step = recording_step  # type: ignore[method-assign]
        with pytest.raises(NonFiniteLossError) as info:
            trainer.fit(DataLoader(data, batch_size=16), epochs=3)
        msg = str(info.value)
        assert "gradient is not finite" in msg and "epoch 2, step 3 (global step 9)" in msg
        assert f"kept at {str(tmp_path / 'model.pt')!r}" in msg and "global step 8" in msg
        assert trainer.global_step == 8
        for p, p0 in zip(model.parameters(), before):  # the step was not taken, the gradients cleared
            assert torch.equal(p.detach(), p0) and p.grad is None
        ckpt = load_checkpoint(tmp_path / "model.pt")
        assert ckpt["trainer"]["global_step"] == 8
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())

    def test_non_finite_weights_are_never_checkpointed(self, data: TensorDataset, tmp_path: Path) -> None:
        model = small_model()
        trainer = make_trainer(model, lr=float("inf"), out_dir=tmp_path, checkpoint_every=1)  # w - inf * g
        with pytest.raises(NonFiniteLossError) as info:
            trainer.fit(DataLoader(data, batch_size=16), epochs=1)
        msg = str(info.value)
        assert "weights are not finite" in msg and "was not written" in msg
        assert "no checkpoint was written yet" in msg and not (tmp_path / "model.pt").exists()
        with pytest.raises(NonFiniteLossError, match="weights are not finite"):
            trainer.save(tmp_path / "other.pt")
        assert not (tmp_path / "other.pt").exists()

    def test_no_checkpoint_yet_names_no_file(self, data: TensorDataset, tmp_path: Path) -> None:
        class NaNLoss(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net, self.calls = small_model(), 0

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                self.calls += 1
                return self.net(x) * (float("nan") if self.calls > 1 else 1.0)

        with pytest.raises(NonFiniteLossError) as info:
            make_trainer(NaNLoss(), out_dir=tmp_path).fit(DataLoader(data, batch_size=16), epochs=1)
        msg = str(info.value)
        assert "loss is not finite at epoch 1, step 2" in msg and "no checkpoint was written yet" in msg
        assert "model.pt" not in msg and not (tmp_path / "model.pt").exists()
        with pytest.raises(NonFiniteLossError, match="no out_dir was given"):
            make_trainer(NaNLoss()).fit(DataLoader(data, batch_size=16), epochs=1)


# ---------------------------------------------------------------------------------------------
# 3. labels: the ignore index and out-of-range classes
class TestLabels:
    @pytest.mark.parametrize("bad,match", [(-100, r"labels: expected non-negative class indices, got -100 \(ignore"),
                                           (10, r"labels: expected class indices in \[0, 9\].*got values in \[\d+, 10\]")])
    def test_train_step_and_evaluate_refuse_them(self, data: TensorDataset, bad: int, match: str) -> None:
        x, y = data.tensors[0][:8], data.tensors[1][:8].clone()
        y[3] = bad
        model = small_model()
        before = [p.detach().clone() for p in model.parameters()]
        for reg in (None, FGR(1.0, sigma=0.1), IGR(1.0)):
            with pytest.raises(ValueError, match=match):
                make_trainer(model, regularizer=reg).train_step(x, y)
        with pytest.raises(ValueError, match=match):
            make_trainer(model).evaluate([(x, y)])
        assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))

    def test_known_class_count_is_checked_before_the_transfer_and_the_attack(self, data: TensorDataset) -> None:
        x, y = data.tensors[0][:8], data.tensors[1][:8]
        model = small_model()
        trainer = make_trainer(model, adversary=torchattacks.FGSM(model, eps=0.1))
        bad = y.clone()
        bad[0] = -100
        with pytest.raises(ValueError, match="labels"):
            trainer.train_step(x, bad)  # the attack never sees the ignore index
        trainer.train_step(x, y)  # the trainer now knows the model has 10 outputs
        bad[0] = 12
        with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 9\]"):
            trainer.train_step(x, bad)


# ---------------------------------------------------------------------------------------------
# 4. a batch-norm model whose last batch has one example
def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10))


class TestSingleExampleBatch:
    def test_pytorch_itself_refuses_it(self) -> None:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            bn_model().train()(torch.rand(1, 1, 28, 28))  # what the trainer avoids

    def test_dropped_and_logged_once_per_epoch_and_resumable(self, data: TensorDataset, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
        ds = TensorDataset(data.tensors[0][:33], data.tensors[1][:33])  # 16 + 16 + 1
        trainer = make_trainer(bn_model(), out_dir=tmp_path)
        with caplog.at_level("WARNING", logger="fgr_defense"):
            history = trainer.fit(DataLoader(ds, batch_size=16), epochs=2)
        dropped = [r for r in caplog.records if "dropped a training batch of 1 example" in r.getMessage()]
        assert len(dropped) == 2  # once per epoch
        assert [(r["steps"], r["dropped_batches"]) for r in history] == [(2, 1), (2, 1)]
        assert trainer.global_step == 4
        model = bn_model()
        resumed = Trainer.resume(tmp_path / "model.pt", model, torch.optim.SGD(model.parameters(), lr=0.05),
                                 device="cpu", progress=False, seed=0, out_dir=tmp_path)
        assert len(resumed.fit(DataLoader(ds, batch_size=16), epochs=3)) == 3

    def test_cli_vgg11_limit_65_batch_64_finishes_and_resumes(self, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
        out = str(tmp_path / "vgg")
        args = ("--model", "vgg11", "--dataset", "mnist5k", "--limit", "65", "--batch-size", "64", "--no-val",
                "--out", out)
        assert run_cli(*args, "--epochs", "1") == 0
        assert run_cli(*args, "--epochs", "2", "--resume") == 0
        log = json.loads((tmp_path / "vgg" / "log.json").read_text())
        assert [(r["epoch"], r["steps"], r["dropped_batches"]) for r in log["epochs"]] == [(1, 1, 1), (2, 1, 1)]
        capsys.readouterr()
        changed = ("--limit", "66", *args[6:])
        assert run_cli("--model", "vgg11", "--dataset", "mnist5k", "--batch-size", "64", *changed,
                       "--epochs", "3", "--resume") == 1
        err = capsys.readouterr().err
        assert "different settings" in err and "limit: stored 65, given 66" in err


# ---------------------------------------------------------------------------------------------
# 5. command-line arguments are checked before any work
@pytest.mark.parametrize("args,flag", [
    (("--val-limit", "0"), "--val-limit: expected an int >= 1, got 0"),
    (("--limit", "0"), "--limit: expected an int >= 1"),
    (("--limit", "-5"), "--limit: expected an int >= 1"),
    (("--batch-size", "0"), "--batch-size: expected an int >= 1"),
    (("--epochs", "0"), "--epochs: expected an int >= 1"),
    (("--workers", "-1"), "--workers: expected an int >= 0"),
    (("--checkpoint-every", "0"), "--checkpoint-every: expected an int >= 1"),
    (("--lam-batch-size", "0", "--defense", "FGR"), "--lam-batch-size: expected an int >= 1"),
    (("--lr", "nan"), "--lr: expected a finite number in (0, 10], got nan"),
    (("--lr", "inf"), "--lr: expected a finite number in (0, 10], got inf"),
    (("--defense", "AT-PGD", "--eps", "inf"), "--eps: expected a finite number in [0, 10000], got inf"),
    (("--defense", "FGR", "--weight", "nan"), "--weight: expected a finite number in [0, 1e+07], got nan"),
    (("--defense", "FGR", "--lam", "inf"), "--lam: expected a finite number in [0, 1e+07], got inf"),
    (("--defense", "FGR+RS", "--sigma", "nan"), "--sigma: expected a finite number in [0, 10000], got nan"),
    (("--grad-clip", "inf"), "--grad-clip: expected a finite number > 0, got inf"),
    (("--momentum", "nan"), "--momentum: expected a finite number >= 0, got nan"),
    (("--device", "bogus"), "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (("--keep-best", "--no-val"), "--keep-best: selects best.pt by validation accuracy"),
])
def test_bad_arguments_exit_2_with_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            args: tuple[str, ...], flag: str) -> None:
    out = tmp_path / "run"
    assert run_cli(*args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and err.startswith("deform-robust train: error: ")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--device", "cuda", "--out", str(tmp_path / "x")) == 2
    assert "--device: 'cuda' requested but CUDA is not available" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device: 'cuda:0' requested but CUDA is not available"):
        make_trainer(small_model(), device="cuda:0")


def test_resolve_device_is_the_one_rule() -> None:
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == resolve_device(" AUTO ") == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(ValueError, match="device: expected 'auto'"):
        resolve_device("gpu")
    with pytest.raises(TypeError, match="device: expected a str, torch.device or None, got int 0"):
        resolve_device(0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device: expected 'auto'"):
        make_trainer(small_model(), device="bogus")


# ---------------------------------------------------------------------------------------------
# 6. --download without network
def test_download_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision.datasets.cifar as cifar

    def offline(*args: Any, **kwargs: Any) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=r"dataset 'cifar10': the download into .* failed \(URLError") as info:
        get_dataset("cifar10", train=True, root=tmp_path / "data", download=True)
    assert "cifar-10-batches-py" in str(info.value) and "place the files there yourself" in str(info.value)
    assert run_cli("--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--download",
                   "--out", str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the download into" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# 7. empty, truncated and text checkpoints
@pytest.fixture()
def broken(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    save_model(SmallCNN(), good, ARCH)
    raw = good.read_bytes()
    files = {"empty": b"", "truncated": raw[: len(raw) // 2], "text": b"hello, I am not a checkpoint\n"}
    out = {}
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
        out[name] = tmp_path / f"{name}.pt"
    return out


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_unreadable_checkpoints_are_a_clear_value_error(broken: dict[str, Path], kind: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = broken[kind]
    match = rf"checkpoint '{path}' is not a readable checkpoint \(truncated\?\): \w+"
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=match):
        load_model(path)
    model = small_model()
    with pytest.raises(ValueError, match=match):
        Trainer.resume(path, model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    run = tmp_path / f"run-{kind}"
    run.mkdir()
    (run / "model.pt").write_bytes(path.read_bytes())
    assert run_cli("--epochs", "1", "--limit", "32", "--out", str(run), "--resume") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a readable checkpoint (truncated?)" in err


def test_foreign_and_incomplete_checkpoints_name_what_is_missing(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="is not a deform-robust checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "deform-robust/1", "arch": ARCH}, tmp_path / "noweights.pt")
    with pytest.raises(ValueError, match="missing the model weights \\('state_dict'\\)"):
        load_model(tmp_path / "noweights.pt")
    torch.save({"format": "deform-robust/1", "arch": {"name": "smallcnn"}, "state_dict": {}}, tmp_path / "arch.pt")
    with pytest.raises(ValueError, match=r"'arch' is missing keys \['in_channels', 'num_classes', 'size'\]"):
        load_model(tmp_path / "arch.pt")
    save_model(SmallCNN(), tmp_path / "plain.pt", ARCH)
    model = SmallCNN()
    with pytest.raises(ValueError, match="has no trainer state"):
        Trainer.resume(tmp_path / "plain.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    save_model(SmallCNN(), tmp_path / "partial.pt", ARCH, extra={"trainer": {"version": 1, "epoch": 1}})
    with pytest.raises(ValueError, match=r"the trainer state is missing keys \['step_in_epoch'"):
        Trainer.resume(tmp_path / "partial.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    make_trainer(SmallCNN()).save(tmp_path / "full.pt")
    other = small_model()  # width 4, not the stored width 32
    with pytest.raises(ValueError, match="its weights do not fit the model"):
        Trainer.resume(tmp_path / "full.pt", other, torch.optim.SGD(other.parameters(), lr=0.1), device="cpu")


# ---------------------------------------------------------------------------------------------
# 8. a kill between the final model.pt and log.json
def test_a_log_left_behind_is_repaired_even_with_nothing_to_do(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("--epochs", "2", "--limit", "64", "--batch-size", "32", "--no-val", "--out", str(out))
    assert run_cli(*args) == 0
    log_path = out / "log.json"
    full = json.loads(log_path.read_text())
    behind = dict(full, epochs=full["epochs"][:1])  # what a kill after model.pt, before log.json leaves
    log_path.write_text(json.dumps(behind))
    assert run_cli(*args, "--resume") == 0  # nothing to train
    assert json.loads(log_path.read_text())["epochs"] == full["epochs"]
    log_path.unlink()
    assert run_cli(*args, "--resume") == 0
    assert [r["epoch"] for r in json.loads(log_path.read_text())["epochs"]] == [1, 2]


def test_trainer_fit_rewrites_the_log_from_the_checkpoint(data: TensorDataset, tmp_path: Path) -> None:
    loader = DataLoader(data, batch_size=48)
    trainer = make_trainer(small_model(), out_dir=tmp_path)
    calls = {"n": 0}
    write = trainer._write_log

    def killed_on_the_last_epoch() -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the start of fit, epoch 1, then epoch 2 is killed
            raise KeyboardInterrupt
        write()

    trainer._write_log = killed_on_the_last_epoch  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loader, 2)
    assert len(json.loads((tmp_path / "log.json").read_text())["epochs"]) == 1
    model = small_model()
    resumed = Trainer.resume(tmp_path / "model.pt", model, torch.optim.SGD(model.parameters(), lr=0.05),
                             device="cpu", progress=False, seed=0, out_dir=tmp_path)
    assert resumed.fit(loader, 2) == resumed.history  # nothing to do
    log = json.loads((tmp_path / "log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2] and log["meta"]["complete"]


# ---------------------------------------------------------------------------------------------
# 9. every numeric parameter of transforms and regularizers is finite
@pytest.mark.parametrize("make,match", [
    (lambda: FGR(float("inf")), r"weight: expected a finite number in \[0, 1e\+07\], got inf"),
    (lambda: FGR(float("nan")), r"weight: expected a finite number in \[0, 1e\+07\], got nan"),
    (lambda: IGR(float("inf")), r"weight: expected a finite number in \[0, 1e\+07\], got inf"),
    (lambda: FGR(1.0, sigma=float("inf")), "sigma: expected a finite number >= 0, got inf"),
    (lambda: IGR(1.0, sigma=float("nan")), "sigma: expected a finite number >= 0, got nan"),
    (lambda: GradientRegularizer(Affine(), 1.0, sigma=float("inf")), "sigma: expected a finite number"),
    (lambda: FGR(1.0, q=float("nan")), r"q: expected a norm order >= 1 or float\('inf'\) \(the L-inf norm\), got nan"),
    (lambda: FGR(1.0, q=float("-inf")), r"q: expected a norm order >= 1"),
    (lambda: FGR.from_paper(float("inf")), r"lam: expected a finite number in \[0, 1e\+07\], got inf"),
    (lambda: FGR.from_paper(100, sigma_normalized=float("nan")), "sigma_normalized: expected a finite number"),
    (lambda: MaskedAdditive(torch.tensor([[1.0, float("inf")]])), "mask: expected finite values"),
    (lambda: MaskedAdditive.patch(6, 6, 1, 1, 2.0), "size: expected an int"),
    (lambda: Flow("circular"), "padding_mode: expected one of"),
    (lambda: Affine("wrap"), "padding_mode: expected one of"),
    (lambda: make_trainer(small_model(), grad_clip=float("inf")), "grad_clip: expected a finite number > 0"),
])
def test_numeric_parameters_must_be_finite(make: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_q_inf_is_the_documented_linf_norm() -> None:
    reg = FGR(1.0, q=float("inf"))
    assert reg.q == float("inf")
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    x, y = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 2])
    assert torch.isfinite(reg(model, x, y))


# ---------------------------------------------------------------------------------------------
# 10. the one seed rule and the one slug rule
def test_derive_seed_is_sha256_of_the_joined_parts() -> None:
    for parts in [(0,), (3, 0, 1, 0), (7, "m|FlowPGD|0|1.0"), ("a", -5, "b")]:
        text = "|".join(str(p) for p in parts)
        expected = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
        assert derive_seed(*parts) == expected
    assert len({derive_seed(0, e, s, 0) for e in range(4) for s in range(50)}) == 200
    for bad in [(), (True,), (1.0,), (None,)]:
        with pytest.raises(TypeError, match="parts"):
            derive_seed(*bad)


def test_trainer_seeds_every_step_with_derive_seed(data: TensorDataset) -> None:
    seen: list[int] = []

    class Recorder:
        def __init__(self, batches: list[Any]) -> None:
            self.batches = batches

        def __len__(self) -> int:
            return len(self.batches)

        def __iter__(self) -> Iterator[Any]:
            seen.append(torch.initial_seed())  # seeded before the epoch's iterator is created

            def gen() -> Iterator[Any]:
                for b in self.batches:
                    seen.append(torch.initial_seed())  # and before each batch is fetched
                    yield b

            return gen()

    batches = [(data.tensors[0][i:i + 16], data.tensors[1][i:i + 16]) for i in (0, 16)]
    make_trainer(small_model(), seed=42).fit(Recorder(batches), epochs=2)
    expected = []
    for epoch in range(2):
        expected += [derive_seed(42, epoch, step + 1, 0) for step in (-1, 0, 1)]
    assert seen == expected


@pytest.mark.parametrize("text,slug", [
    ("FGR+RS", "fgr-rs"), ("FGR+RS+AT-PGD", "fgr-rs-at-pgd"), ("IGR w=0.5", "igr-w-0.5"),
    ("mnist5k/vgg11", "mnist5k-vgg11"), ("..hidden", "hidden"), ("A__B  C", "a-b-c"), ("lam1e-05", "lam1e-05"),
])
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug
    assert slugify(slug) == slug  # idempotent


def test_slugify_errors_and_default_out_dir() -> None:
    from deform_robust.training.spec import default_out_dir

    with pytest.raises(ValueError, match="text: expected a name with at least one letter or digit"):
        slugify("+/.")
    with pytest.raises(TypeError, match="text: expected a str"):
        slugify(3)  # type: ignore[arg-type]
    assert default_out_dir("mnist5k", "smallcnn", "FGR+RS", weight=0.5).name == slugify("mnist5k-smallcnn-FGR+RS-w0.5")
