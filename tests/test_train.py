"""Training engine and `fastvit train` / `fastvit eval`: recipes, a full short run with its
files, exact resume, fine-tuning with frozen stages, distillation and evaluation."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fastvit
from fastvit.cli.main import main
from fastvit.errors import CheckpointError, ConfigError
from fastvit.train import RECIPES, recipe_config, train, validate_config
from fastvit.train import engine as engine_mod
from fastvit.train.checkpoint import load_training_checkpoint
from fastvit.train.distill import DistillationLoss, load_teacher
from fastvit.train.metrics import COLUMNS
from fastvit.train.modeling import param_groups, variant_defaults

QUICK = [
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--limit-train-batches",
    "3",
    "--limit-val-batches",
    "1",
    "--no-progress",
]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_folder(root: Path, classes=("a", "b", "c"), n_train: int = 4, n_val: int = 2) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (60 * ci, 20 * i, 128)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One short digits run through the CLI (with TensorBoard and the PNG), shared below."""
    out = tmp_path_factory.mktemp("quick") / "run"
    rc = main(["train", "--output", str(out), *QUICK])
    assert rc == 0
    return out


# --------------------------------------------------------------------------- recipes
def test_imagenet_recipe_is_the_official_one():
    cfg = recipe_config("imagenet")
    assert (cfg.opt, cfg.base_lr, cfg.lr_base_size, cfg.weight_decay) == ("adamw", 1e-3, 1024, 0.05)
    assert (cfg.epochs, cfg.sched, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr) == (
        300,
        "cosine",
        5,
        1e-6,
        1e-5,
    )
    assert (cfg.smoothing, cfg.auto_augment, cfg.reprob) == (0.1, "rand-m9-mstd0.5-inc1", 0.25)
    assert (cfg.mixup, cfg.cutmix, cfg.ema, cfg.ema_decay, cfg.input_size) == (
        0.8,
        1.0,
        True,
        0.9995,
        256,
    )
    drop = {
        n: variant_defaults(n)["drop_path"]
        for n in ("fastvit_t8", "fastvit_sa12", "fastvit_sa24", "fastvit_sa36", "fastvit_ma36")
    }
    assert drop == {
        "fastvit_t8": 0.0,
        "fastvit_sa12": 0.1,
        "fastvit_sa24": 0.1,
        "fastvit_sa36": 0.2,
        "fastvit_ma36": 0.35,
    }
    digits = recipe_config("digits", epochs=3)
    assert digits.input_size == 32 and digits.hflip == 0.0 and digits.epochs == 3
    assert set(RECIPES) == {"imagenet", "digits"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_size": 16}, "too small"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"amp": "fp8"}, "unknown --amp value"),
        ({"opt": "adamw9"}, "unknown optimizer"),
        ({"mixup": 0.2, "batch_size": 7}, "even batch size"),
        ({"distill": "hard"}, "needs --teacher"),
        ({"freeze_stages": 5}, "between 0 and 4"),
        ({"train_dir": "x"}, "both --train-dir and --val-dir"),
    ],
)
def test_validate_config_rejects(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(recipe_config("digits", **change))


def test_no_weight_decay_on_norms_biases_and_layer_scales():
    model = fastvit.create_model("fastvit_sa12", num_classes=10)
    no_decay, decay = param_groups(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    ids = {id(p) for p in no_decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    for n, p in model.named_parameters():
        should_skip = p.ndim <= 1 or "layer_scale" in n
        assert (n in names) == should_skip, n
    assert any("layer_scale" in n for n in names) and "head.bias" in names
    assert "head.weight" not in names
    opt = engine_mod.build_optimizer(model, recipe_config("digits"), lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]


# --------------------------------------------------------------------------- a full run
def test_quick_run_writes_everything(quick_run, capsys):
    out = quick_run
    for name in (
        "last.pt",
        "best.pt",
        "metrics.csv",
        "curves.png",
        "summary.json",
        "model.safetensors",
        "model_reparam.safetensors",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert tuple(rows[0].keys()) == COLUMNS
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_top1"]) <= 100 for r in rows)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mismatches"] == 0 and summary["num_val"] == 16
    assert summary["max_logit_diff"] < 1e-4
    ckpt = load_training_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 6
    assert ckpt["config"]["model"] == "fastvit_t8" and ckpt["classes"] == [
        str(i) for i in range(10)
    ]
    assert set(ckpt) >= {"model", "ema", "optimizer", "scheduler", "rng", "best", "history"}

    unfused = fastvit.load_model(out / "model.safetensors")
    fused = fastvit.load_model(out / "model_reparam.safetensors")
    assert not fastvit.is_fused(unfused) and fastvit.is_fused(fused)
    assert fused.class_names == [str(i) for i in range(10)]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert float((unfused(x) - fused(x)).abs().max()) < 1e-4

    # `fastvit eval` on the fused file sees the same 16 val images with the stored
    # preprocessing (32 px, crop 1.0), so it reproduces the run's own top-1 exactly
    rc, text, err = cli(
        ["eval", out / "model_reparam.safetensors", "-b", "16", "--limit-batches", "1", "--json"],
        capsys,
    )
    assert rc == 0, err
    res = json.loads(text)
    assert res["form"] == "fused" and res["images"] == 16 and res["input_size"] == 32
    assert res["top1"] == pytest.approx(summary["top1"], abs=1e-9)
    rc, text, err = cli(["eval", out / "last.pt", "-b", "16", "--limit-batches", "1"], capsys)
    assert rc == 0 and "top-1" in text and "(fastvit_t8, unfused)" in text
    # the same fused weights in timm's fused layout (a .pth without metadata): same result
    # once the preprocessing is given on the command line
    timm_fused = out.parent / "timm_fused.pth"
    torch.save(fastvit.convert_state_dict(fused.state_dict(), to="timm"), timm_fused)
    rc, text, err = cli(
        [
            "eval",
            timm_fused,
            "-b",
            "16",
            "--limit-batches",
            "1",
            "--json",
            "--input-size",
            "32",
            "--crop-pct",
            "1.0",
            "--interpolation",
            "bilinear",
        ],
        capsys,
    )
    assert rc == 0, err
    assert json.loads(text)["top1"] == pytest.approx(summary["top1"], abs=1e-9)


@pytest.mark.slow
def test_digits_training_learns(tmp_path):
    """Two epochs on the real digits at 32 px already classify most of the val split
    (93% here; the full 10-epoch recipe reaches >= 99%, see benchmarks/bench_train.py)."""
    res = train(
        recipe_config(
            "digits",
            output=str(tmp_path / "r"),
            epochs=2,
            warmup_epochs=0,
            tensorboard=False,
            plot=False,
            progress=False,
        ),
        echo=None,
    )
    assert res.best_top1 >= 85.0, res.history
    assert res.final.mismatches == 0 and res.final.num_val == 359
    assert res.final.top1 == pytest.approx(res.best_top1, abs=1e-9)
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]


@pytest.mark.parametrize(
    "options",
    [
        ["--amp", "bf16", "--clip-grad", "1.0", "--grad-checkpointing", "--no-channels-last"],
        pytest.param(  # (slow suite: quick suite <= 4 min)
            [
                "--opt",
                "sgd",
                "--lr",
                "0.05",
                "--sched",
                "step",
                "--no-ema",
                "--mixup",
                "0.2",
                "--cutmix",
                "1.0",
                "--auto-augment",
                "rand-m9-mstd0.5-inc1",
                "--reprob",
                "0.25",
                "--drop-path",
                "0.1",
                "--model",
                "fastvit_sa12",
                "--input-size",
                "64",
            ],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["bf16-clip-checkpointing", "sgd-mixup-randaug-sa12"],
)
def test_training_options_run(options, tmp_path, capsys):
    rc, _out, err = cli(
        [
            "train",
            "--output",
            tmp_path / "o",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--limit-train-batches",
            "2",
            "--limit-val-batches",
            "1",
            "--no-tensorboard",
            "--no-plot",
            *options,
        ],
        capsys,
    )
    assert rc == 0, err
    ckpt = load_training_checkpoint(tmp_path / "o" / "last.pt")
    loss = ckpt["history"][0]["train_loss"]
    assert 0 < loss < 10
    assert ckpt["config"]["model"] == ("fastvit_sa12" if "--model" in options else "fastvit_t8")
    assert (ckpt["ema"] is None) == ("--no-ema" in options)
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["mismatches"] == 0


def test_channels_last_cpu_training_at_128px():
    # torch 2.14's channels-last CPU backward of a strided 1x1 conv segfaults at >= 112 px;
    # ours runs those MobileOne branches on the subsampled input, so it has none and trains.
    ours = fastvit.create_model("fastvit_t8", num_classes=10)
    assert not any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
        for m in ours.modules()
    )
    ours.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(ours(x), torch.tensor([1, 2])).backward()
    assert ours.patch_embed.conv1.rbr_scale.conv.weight.grad is not None


# --------------------------------------------------------------------------- resume
def _compare_runs(a: Path, b: Path) -> None:
    ca, cb = load_training_checkpoint(a / "last.pt"), load_training_checkpoint(b / "last.pt")
    assert ca["epoch"] == cb["epoch"] and ca["global_step"] == cb["global_step"]
    for part in ("model", "ema"):
        for k, v in ca[part].items():
            assert torch.equal(v, cb[part][k]), (part, k)
    for pid, st in ca["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(
                torch.as_tensor(v), torch.as_tensor(cb["optimizer"]["state"][pid][k])
            )
    for ra, rb in zip(ca["history"], cb["history"]):
        for k in ("train_loss", "val_loss", "val_top1", "ema_top1", "lr"):
            assert ra[k] == rb[k], k


@pytest.mark.slow
def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    base = recipe_config(
        "digits",
        epochs=3,
        batch_size=16,
        limit_train_batches=3,
        limit_val_batches=1,
        tensorboard=False,
        plot=False,
        progress=False,
    )
    train(base.replace(output=str(tmp_path / "a")), echo=None)

    real = engine_mod.train_one_epoch

    def killed_in_epoch_2(*args, **kwargs):
        if kwargs["desc"].startswith("epoch 2/"):
            real(*args, **dict(kwargs, num_batches=2))  # 2 of 3 steps change the weights...
            raise KeyboardInterrupt  # ...then the process "dies" mid-epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "train_one_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(base.replace(output=str(tmp_path / "b")), echo=None)
    assert load_training_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine_mod, "train_one_epoch", real)

    lines: list[str] = []
    train(
        base.replace(output=str(tmp_path / "b"), resume=str(tmp_path / "b" / "last.pt")),
        echo=lines.append,
    )
    assert any("resumed from" in ln and "epoch 1/3" in ln for ln in lines)
    _compare_runs(tmp_path / "a", tmp_path / "b")


def test_resume_through_cli_uses_stored_config(quick_run, tmp_path, capsys, caplog):
    # continue the quick 2-epoch run for one more epoch from a copy of its last.pt alone
    run = tmp_path / "cont"
    run.mkdir()
    (run / "last.pt").write_bytes((quick_run / "last.pt").read_bytes())
    with caplog.at_level(logging.WARNING, logger="fastvit"):
        rc, out, err = cli(
            [
                "train",
                "--resume",
                run / "last.pt",
                "--epochs",
                "3",
                "--output",
                run,
                "--no-tensorboard",
            ],
            capsys,
        )
    assert rc == 0, err
    if not (run / "best.pt").exists():  # epoch 3 did not beat the copied run's best
        assert "has no best.pt" in caplog.text
    assert "resumed from" in out and "epoch   3/3" in out and "epoch   1/3" not in out
    ckpt = load_training_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["global_step"] == 9  # 3 batches per epoch kept
    assert ckpt["config"]["batch_size"] == 16


# --------------------------------------------------------------------------- fine-tuning
def test_init_new_classes_with_frozen_stages(quick_run, tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    cfg = recipe_config(
        "imagenet",
        data=str(data),
        init=str(quick_run / "model.safetensors"),
        freeze_stages=2,
        input_size=32,
        batch_size=4,
        epochs=1,
        warmup_epochs=0,
        output=str(tmp_path / "ft"),
        tensorboard=False,
        plot=False,
        progress=False,
    )
    lines: list[str] = []
    res = train(cfg, echo=lines.append)
    rep = res.init_report
    assert rep.skipped == ["head.weight", "head.bias"]  # 10 -> 3 classes: new head
    src = fastvit.load_model(quick_run / "model.safetensors").state_dict()
    assert rep.loaded == len(src) - 2
    assert any(ln.startswith("init from") and "re-initialised 2" in ln for ln in lines)
    assert res.frozen == ["patch_embed", "network.0", "network.1", "network.2"]
    after = res.model_state
    for k, v in after.items():
        if k.startswith(("patch_embed.", "network.0.", "network.1.", "network.2.")):
            assert torch.equal(v, src[k]), k  # weights and BN statistics untouched
    trained = [k for k in after if k.startswith("network.4.") and k.endswith("weight")]
    assert any(not torch.equal(after[k], src[k]) for k in trained)
    assert after["head.weight"].shape == (3, src["head.weight"].shape[1])
    saved = fastvit.load_model(tmp_path / "ft" / "model_reparam.safetensors")
    assert saved.class_names == ["a", "b", "c"] and saved.num_classes == 3


def test_init_with_a_different_model_flag_is_refused(quick_run):
    with pytest.raises(ConfigError, match="is a fastvit_t8 checkpoint but --model is"):
        train(
            recipe_config("digits", model="fastvit_t12", init=str(quick_run / "model.safetensors")),
            echo=None,
        )


# --------------------------------------------------------------------------- distillation
def test_distillation_loss_terms():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(6, 4).eval()
    x = torch.randn(5, 6)
    t_logits = teacher(x).detach()
    student = t_logits + 0.3 * torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(ce, teacher, "hard", alpha=1.0)(x, student, y)
    assert torch.allclose(hard, F.cross_entropy(student, t_logits.argmax(1)))
    soft = DistillationLoss(ce, teacher, "soft", alpha=0.5, tau=2.0)(x, student, y)
    kl = (
        F.kl_div(
            F.log_softmax(student / 2, 1),
            F.log_softmax(t_logits / 2, 1),
            reduction="batchmean",
            log_target=True,
        )
        * 4
    )
    assert torch.allclose(soft, 0.5 * ce(student, y) + 0.5 * kl)
    same = DistillationLoss(ce, teacher, "soft", alpha=1.0)(x, t_logits, y)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_distill_from_fastvit_checkpoint(quick_run, tmp_path, capsys):
    rc, _out, err = cli(
        [
            "train",
            "--output",
            tmp_path / "d",
            "--distill",
            "soft",
            "--teacher",
            quick_run / "model.safetensors",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--limit-train-batches",
            "2",
            "--limit-val-batches",
            "1",
            "--no-tensorboard",
            "--no-plot",
        ],
        capsys,
    )
    assert rc == 0, err
    assert (tmp_path / "d" / "model_reparam.safetensors").is_file()


def test_named_teachers_from_weight_files(tmp_path):
    import timm
    import torchvision

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), weights)
    teacher = load_teacher("resnet10t", str(weights), num_classes=10, input_size=32)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="do not fit resnet10t with 5 classes"):
        load_teacher("resnet10t", str(weights), num_classes=5, input_size=32)
    tv = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), tv)
    assert load_teacher("mobilenet_v3_small", str(tv), 10, 32)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        10,
    )
    with pytest.raises(ConfigError, match="--teacher-weights"):
        load_teacher("resnet10t", None, 10, 32)
    with pytest.raises(ConfigError, match="unknown teacher"):
        load_teacher("no_such_net", str(weights), 10, 32)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher("missing/teacher.safetensors", None, 10, 32)
