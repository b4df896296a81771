"""Run directories and resuming: never lose a run (issue 9), and short-run defaults that say
what they do (issue 10). Every run here is one or two tiny digits epochs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from PIL import Image

import fastvit
from fastvit.cli import train as cli_train
from fastvit.cli.main import main
from fastvit.train import TrainConfig, recipe_config, train
from fastvit.train.checkpoint import load_training_checkpoint
from fastvit.train.datasets import build_splits
from fastvit.train.metrics import COLOURS, curves_figure, topk_correct

TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--limit-train-batches",
    "1",
    "--limit-val-batches",
    "1",
    "--warmup-epochs",
    "0",
    "--no-tensorboard",
    "--no-plot",
    "--no-progress",
]


def cli(argv: list, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(argv: list, capsys, expect: str) -> str:
    rc, _out, err = cli(argv, capsys)
    err = err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expect in err, err
    return err


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def hidden(run: Path) -> list[str]:
    """Temporary or lock files left in a run directory (there should be none)."""
    return sorted(p.name for p in run.rglob(".*"))


def class_folder(root: Path, classes=("a", "b", "c"), n: int = 6) -> Path:
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (36, 36), (70 * ci, 30 * i, 128)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch digits run (copied by the tests that modify runs)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--output", str(out), *TINY]) == 0
    return out


# --------------------------------------------------------------------------- the CLI
def test_cli_options_are_derived_from_the_config():
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser)
    dests = {a.dest: a for a in parser._actions if a.dest != "help"}
    cli_fields = {f.name for f in fields(TrainConfig) if f.metadata.get("cli", False)}
    assert set(dests) == cli_fields and "extra" not in dests and "overwrite" in dests
    for f in fields(TrainConfig):
        if f.name in dests:
            assert dests[f.name].help.startswith(f.metadata["help"]), f.name
    # the option names users know (aliases included) still parse, defaults stay None
    args = parser.parse_args(
        [
            "-m",
            "fastvit_sa12",
            "-b",
            "16",
            "--aa",
            "none",
            "--wd",
            "0.1",
            "-o",
            "x",
            "--no-ema",
            "--no-aug",
            "--scale",
            "0.5",
            "1",
            "--mean",
            "0.1",
            "0.2",
            "0.3",
            "--lr",
            "0.01",
            "--epochs",
            "4",
        ]
    )
    assert (
        args.model,
        args.batch_size,
        args.auto_augment,
        args.weight_decay,
        args.output,
        args.ema,
        args.no_aug,
        args.scale,
        args.lr,
        args.epochs,
    ) == ("fastvit_sa12", 16, "none", 0.1, "x", False, True, [0.5, 1.0], 0.01, 4)
    assert args.seed is None and args.tensorboard is None
    cfg, ckpt = cli_train.config_from_args(args)
    assert ckpt is None and cfg.recipe == "digits" and cfg.auto_augment is None
    assert cfg.scale == (0.5, 1.0) and cfg.mean == (0.1, 0.2, 0.3) and cfg.ema is False


def test_run_files_get_umask_permissions(finished):
    """Issue 10 item 11: the files training writes are readable like any normal file (the
    fileio helper, not mkstemp's 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for name in ("last.pt", "best.pt", "metrics.csv", "summary.json"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_topk_correct_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    top1, top5 = topk_correct(logits, torch.tensor([1, 2, 0]))
    assert (int(top1), int(top5)) == (1, 3)
    top1, top2 = topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2))
    assert (int(top1), int(top2)) == (1, 2)


# --------------------------------------------------------------------------- issue 9
def test_resume_continues_in_the_checkpoint_directory(finished, tmp_path, capsys):
    """Item 1: `cp -a A B; --resume B/last.pt` trains B and leaves A alone; after `mv A C`
    the run continues in C and A is not re-created."""
    a = tmp_path / "A"
    shutil.copytree(finished, a)
    before = snapshot(a)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    rc, _out, err = cli(["train", "--resume", b / "last.pt", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert snapshot(a) == before
    assert load_training_checkpoint(b / "last.pt")["epoch"] == 2
    assert load_training_checkpoint(b / "last.pt")["config"]["output"] == str(b)
    c = tmp_path / "C"
    a.rename(c)
    rc, _out, err = cli(["train", "--resume", c / "last.pt", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert not a.exists() and load_training_checkpoint(c / "last.pt")["epoch"] == 2
    assert hidden(b) == [] and hidden(c) == []


def test_new_run_refuses_an_existing_run_directory(finished, tmp_path, capsys):
    """Item 2: a new run into a run directory is refused in one line naming --resume and
    --overwrite, nothing is touched; with --overwrite the old run's files are replaced."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old run")
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    err = one_line_error(["train", "--output", run, *TINY], capsys, "already holds a run")
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before and (run / "tensorboard" / "events.out.tfevents.old").exists()
    rc, _out, err = cli(["train", "--output", run, *TINY, "--seed", "7", "--overwrite"], capsys)
    assert rc == 0, err
    assert not (run / "tensorboard").exists()  # the old run's logs are gone, not mixed in
    assert (run / "notes.txt").read_text() == "mine"  # files that are not the run's stay
    assert load_training_checkpoint(run / "last.pt")["config"]["seed"] == 7


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_second_concurrent_training_fails_in_one_line(tmp_path, capsys):
    """Item 3: another process holds the run directory's lock -> one-line error."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run / '.fastvit-train.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_line_error(["train", "--output", run, *TINY], capsys, "another training")
        assert f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "last.pt").exists()
    rc, _out, err = cli(["train", "--output", run, *TINY], capsys)  # lock released: runs
    assert rc == 0, err
    assert hidden(run) == []


def test_reparam_of_a_run_model_keeps_metadata_and_does_not_overwrite(finished, tmp_path, capsys):
    """Item 5."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "model_reparam.safetensors").read_bytes()
    one_line_error(
        ["reparam", run / "model.safetensors", "--size", "32", "--atol", "1e-3"],
        capsys,
        "--overwrite",
    )
    assert (run / "model_reparam.safetensors").read_bytes() == before
    new = tmp_path / "fused.safetensors"
    rc, _out, err = cli(
        ["reparam", run / "model.safetensors", "--size", "32", "--atol", "1e-3", "-o", new], capsys
    )
    assert rc == 0, err
    from safetensors import safe_open

    with safe_open(str(run / "model_reparam.safetensors"), "pt") as f:
        ref = f.metadata()
    with safe_open(str(new), "pt") as f:
        meta = f.metadata()
    for key in (
        "dataset",
        "epoch",
        "val_top1",
        "weights",
        "input_size",
        "crop_pct",
        "class_names",
        "interpolation",
    ):
        assert meta[key] == ref[key], key


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_stale_temps_are_cleaned_on_resume(finished, tmp_path, capsys):
    """Item 6: temporary files a killed process left are removed when the run resumes."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / ".last.pt.dead0001.tmp.pt").write_bytes(b"x" * 1000)
    (run / ".metrics.csv.dead0002.tmp.csv").write_bytes(b"x")
    rc, _out, err = cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert hidden(run) == []


def test_sigterm_during_a_checkpoint_write(finished, tmp_path, capsys, monkeypatch):
    """Item 6: SIGTERM stops like Ctrl-C: a message, exit 143, the previous last.pt intact,
    no temporary file left."""
    import fastvit.train.checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "last.pt").read_bytes()
    real_save = torch.save

    def save_then_terminated(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.flush()
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write, before the rename
        time.sleep(1)

    monkeypatch.setattr(ck.torch, "save", save_then_terminated)
    rc, _out, err = cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert rc == 143
    assert "terminated (SIGTERM)" in err and "--resume" in err and "Traceback" not in err
    assert (run / "last.pt").read_bytes() == before
    assert hidden(run) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_ctrl_c_says_how_to_resume(finished, tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) mid-epoch: one line naming the checkpoint to resume from,
    exit 130, no traceback, last.pt intact."""
    import fastvit.train.engine as engine

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "last.pt").read_bytes()

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    rc, _out, err = cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)
    assert rc == 130, err
    assert f"interrupted (Ctrl-C); resume with --resume {run / 'last.pt'}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (run / "last.pt").read_bytes() == before
    assert hidden(run) == []


def test_failed_run_leaves_no_output_directory(tmp_path, capsys):
    """Item 6: a run that fails before its first checkpoint removes what it created."""
    data = class_folder(tmp_path / "one", classes=("only",))
    out = tmp_path / "new" / "run"
    one_line_error(
        ["train", "--data", data, "--output", out, *TINY], capsys, "needs at least 2 class folders"
    )
    assert not (tmp_path / "new").exists()


def test_resume_and_init_are_exclusive(finished, capsys):
    """Item 9."""
    one_line_error(
        ["train", "--resume", finished / "last.pt", "--init", finished / "model.safetensors"],
        capsys,
        "exclusive",
    )


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_resume_with_changed_options(finished, tmp_path, capsys):
    """Item 15: a changed lr/batch/seed/input size is refused with the reason; fewer epochs
    than already run is refused; more epochs re-plan the schedule and the banner says so."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    for option in (
        ["--lr", "0.05"],
        ["--batch-size", "16"],
        ["--seed", "1"],
        ["--input-size", "64"],
    ):
        err = one_line_error(
            ["train", "--resume", run / "last.pt", *option], capsys, f"cannot change {option[0]}"
        )
        assert "resume without it" in err
    one_line_error(["train", "--resume", run / "last.pt", "--epochs", "0"], capsys, "at least 1")
    assert snapshot(run) == before
    # extending re-plans the cosine schedule over the new length: the lr of epoch 2 is that
    # of a run planned for 3 epochs from the start (the 1-epoch plan had reached min_lr)
    rc, out, err = cli(
        ["train", "--resume", run / "last.pt", "--epochs", "3", "--threads", "1"], capsys
    )
    assert rc == 0, err
    banner = next(ln for ln in out.splitlines() if ln.startswith("resumed from"))
    assert "at epoch 1/3" in banner and "--epochs 1 -> 3 (lr schedule re-planned" in banner
    assert "--threads default -> 1" in banner
    assert "epoch   3/3" in out and "/1 " not in out
    ref = train(
        recipe_config(
            "digits",
            output=str(tmp_path / "ref"),
            epochs=3,
            batch_size=8,
            limit_train_batches=1,
            limit_val_batches=1,
            warmup_epochs=0,
            tensorboard=False,
            plot=False,
            progress=False,
        ),
        echo=None,
    )
    extended = load_training_checkpoint(run / "last.pt")["history"]
    assert [r["lr"] for r in extended[1:]] == [r["lr"] for r in ref.history[1:]]
    assert extended[1]["lr"] > 2 * recipe_config("digits").min_lr
    # the finished 3-epoch run cannot be "resumed" to fewer epochs ("epoch 4/3")
    one_line_error(
        ["train", "--resume", run / "last.pt", "--epochs", "2"],
        capsys,
        "already completed 3 epochs",
    )


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_resume_reads_the_checkpoint_once(finished, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    real_load = torch.load
    reads = []

    def counting_load(f, *a, **kw):
        reads.append(Path(f).name if isinstance(f, (str, os.PathLike)) else "?")
        return real_load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counting_load)
    rc, _out, err = cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert reads.count("last.pt") == 1


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_resume_a_finished_run_into_a_new_output(finished, tmp_path, capsys):
    """Item 16: a finished run resumed with a new --output becomes a complete run there."""
    src = tmp_path / "src"
    shutil.copytree(finished, src)
    before = snapshot(src)
    new = tmp_path / "new"
    rc, out, err = cli(["train", "--resume", src / "last.pt", "--output", new], capsys)
    assert rc == 0, err
    assert "all epochs done" in out
    for name in (
        "last.pt",
        "best.pt",
        "model.safetensors",
        "model_reparam.safetensors",
        "summary.json",
    ):
        assert (new / name).is_file(), name
    assert snapshot(src) == before
    a = fastvit.load_model(src / "model_reparam.safetensors").state_dict()
    b = fastvit.load_model(new / "model_reparam.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it continues from there
    rc, out, err = cli(["train", "--resume", new / "last.pt", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert load_training_checkpoint(new / "last.pt")["epoch"] == 2 and snapshot(src) == before


def test_one_class_data_and_inverted_ranges_are_refused(tmp_path, capsys):
    """Item 19."""
    data = class_folder(tmp_path / "d", classes=("cat",))
    one_line_error(
        ["train", "--data", data, "--output", tmp_path / "o", *TINY],
        capsys,
        "only one class (cat); a classifier needs at least 2",
    )
    one_line_error(
        ["train", "--scale", "1.0", "0.5", "--output", tmp_path / "o", *TINY],
        capsys,
        "--scale MIN MAX must satisfy",
    )
    one_line_error(
        ["train", "--ratio", "0", "0", "--output", tmp_path / "o", *TINY],
        capsys,
        "--ratio MIN MAX must satisfy",
    )
    one_line_error(
        ["train", "--lr", "nan", "--output", tmp_path / "o", *TINY],
        capsys,
        "--lr must be a finite number",
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_warmup_longer_than_the_run_is_capped(tmp_path, capsys, caplog):
    """Item 19 / issue 10 item 6: --warmup-epochs 50 --epochs 1 says so and trains."""
    with caplog.at_level(logging.WARNING, logger="fastvit"):
        rc, out, err = cli(
            ["train", "--output", tmp_path / "o", *TINY, "--warmup-epochs", "50"], capsys
        )
    assert rc == 0, err
    assert "--warmup-epochs 50 is not shorter than the run's 1 epochs" in caplog.text
    schedule = next(ln for ln in out.splitlines() if ln.startswith("schedule:"))
    assert "warmup" not in schedule  # capped to 0 of 1 epoch
    ckpt = load_training_checkpoint(tmp_path / "o" / "last.pt")
    assert ckpt["history"][0]["lr"] < 2e-3 and ckpt["history"][0]["lr"] > 1e-6


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_tensorboard_purges_epochs_logged_after_the_resumed_checkpoint(tmp_path, capsys):
    """Item 20: an interrupted process logged epoch 2 but never checkpointed it; the resumed
    run logs epoch 2 again and readers see it once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    quick = [a for a in TINY if a != "--no-tensorboard"]
    assert cli(["train", "--output", run, *quick], capsys)[0] == 0
    epoch1 = (run / "last.pt").read_bytes()
    time.sleep(1.1)  # event files are named by the second
    assert cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)[0] == 0
    (run / "last.pt").unlink()  # (best.pt may be a hard link to it)
    (run / "last.pt").write_bytes(epoch1)  # as if epoch 2's checkpoint never got written
    time.sleep(1.1)
    assert cli(["train", "--resume", run / "last.pt", "--epochs", "2"], capsys)[0] == 0
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train_loss")]
    assert steps == [1, 2]
    final = load_training_checkpoint(run / "last.pt")["history"]
    assert acc.Scalars("train_loss")[1].value == pytest.approx(final[1]["train_loss"], rel=1e-6)


def test_eval_ema_on_a_model_file_is_refused(finished, capsys):
    """Item 20: --ema only applies to training checkpoints."""
    one_line_error(
        ["eval", finished / "model.safetensors", "--ema", "--limit-batches", "1"],
        capsys,
        "--ema/--no-ema choose between the weights of a training checkpoint",
    )


# --------------------------------------------------------------------------- issue 10
@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_imagenet_recipe_on_a_small_single_folder(tmp_path, capsys, caplog):
    """Items 6 and 7: a folder of class folders is split (stratified, seeded); the ImageNet
    recipe on a 3-epoch, batch-4 run warns about its warmup, lr and EMA and adapts them, and
    the setup prints the effective schedule."""
    data = class_folder(tmp_path / "flowers")
    with caplog.at_level(logging.WARNING, logger="fastvit"):
        rc, out, err = cli(
            [
                "train",
                "--data",
                data,
                "--output",
                tmp_path / "o",
                "--epochs",
                "3",
                "--batch-size",
                "4",
                "--input-size",
                "32",
                "--no-progress",
                "--no-tensorboard",
                "--no-plot",
                "--workers",
                "0",
                "--aa",
                "none",
            ],
            capsys,
        )
    assert rc == 0, err
    assert "15 train / 3 val images, 3 classes" in out  # 6 per class, 20% (1.2 -> 1) each
    assert "--warmup-epochs 5 is not shorter than the run's 3 epochs" in caplog.text
    assert "lr 3.9e-06 is the recipe's 0.001 scaled by batch 4/1024, 256x lower" in caplog.text
    assert "--ema-decay 0.9995 is too slow for a run of 9 updates" in caplog.text
    schedule = next(ln for ln in out.splitlines() if ln.startswith("schedule:"))
    assert "cosine" in schedule and "over 3 epochs" in schedule and "EMA decay" in schedule
    ckpt = load_training_checkpoint(tmp_path / "o" / "last.pt")
    assert ckpt["config"]["val_split"] == 0.2 and ckpt["config"]["seed"] == 42


def test_single_folder_split_is_stratified_and_deterministic(tmp_path):
    data = class_folder(tmp_path / "d", classes=("a", "b"), n=10)
    cfg = recipe_config(
        "imagenet",
        data=str(data),
        input_size=32,
        val_split=0.3,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_pct=1.0,
    )
    s1, s2 = build_splits(cfg), build_splits(cfg)
    assert s1.val.samples == s2.val.samples and s1.train.samples == s2.train.samples
    assert sorted(t for _, t in s1.val.samples) == [0, 0, 0, 1, 1, 1]
    assert not set(s1.val.samples) & set(s1.train.samples)
    assert len(s1.train) + len(s1.val) == 20
    other = build_splits(cfg.replace(seed=1))
    assert other.val.samples != s1.val.samples


def test_curves_have_integer_epochs_and_one_colour_per_series():
    """Item 12."""
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.1 / e,
            "val_top1": 50 + e,
            "ema_val_loss": 1.2 / e,
            "ema_top1": 40 + e,
        }
        for e in (1, 2, 3)
    ]
    fig = curves_figure(history)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    colour = {ln.get_label(): ln.get_color() for ax in fig.axes for ln in ax.get_lines()}
    assert colour["val (EMA)"] == colour["val top-1 (EMA)"] == COLOURS["ema"]
    assert colour["val"] == colour["val top-1"] == COLOURS["val"]


# --------------------------------------------------------------------------- fault injection
KILLER = r"""
import os, signal, sys
import torch
mode, argv = sys.argv[1], sys.argv[2:]
kind, _, arg = mode.partition(":")
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if kind == "step":
    import fastvit.train.engine as eng
    real_step = eng.TrainStep.__call__
    def step(self, images, targets, params, global_step):
        if global_step == int(arg):
            die()
        return real_step(self, images, targets, params, global_step)
    eng.TrainStep.__call__ = step
elif kind == "ckpt":  # half-way through writing the checkpoint of epoch <arg>
    real_save = torch.save
    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("epoch") == int(arg):
            data = __import__("io").BytesIO()
            real_save(obj, data, *a, **kw)
            f.write(data.getvalue()[: len(data.getvalue()) // 2]); f.flush()
            die()
        return real_save(obj, f, *a, **kw)
    torch.save = save
elif kind == "final":  # while writing model.safetensors
    import safetensors.torch as st
    real_file = st.save_file
    def save_file(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        die()
    st.save_file = save_file
from fastvit.cli.main import main
sys.exit(main(argv))
"""


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path, capsys):
    """SIGKILL a run mid-epoch, mid-checkpoint-write and mid-final-write; resuming each time
    ends with exactly the weights, EMA and optimizer state of an uninterrupted run, and no
    temporary file anywhere."""
    args = [
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--limit-train-batches",
        "3",
        "--limit-val-batches",
        "1",
        "--no-tensorboard",
        "--no-plot",
        "--no-progress",
        "--threads",
        "1",
    ]
    ref = tmp_path / "ref"
    assert main(["train", "--output", str(ref), *args]) == 0
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def attempt(mode: str, argv: list[str]) -> int:
        return subprocess.run(
            [sys.executable, "-c", KILLER, mode, *argv], env=env, capture_output=True, timeout=300
        ).returncode

    resume = ["train", "--resume", str(run / "last.pt"), "--threads", "1", "--no-progress"]
    assert attempt("step:5", ["train", "--output", str(run), *args]) == -signal.SIGKILL
    assert load_training_checkpoint(run / "last.pt")["epoch"] == 1
    assert attempt("ckpt:2", resume) == -signal.SIGKILL
    assert [p for p in hidden(run) if ".tmp" in p]  # the kill left a half-written temp file
    assert load_training_checkpoint(run / "last.pt")["epoch"] == 1
    assert attempt("final", resume) == -signal.SIGKILL
    assert load_training_checkpoint(run / "last.pt")["epoch"] == 3
    assert not (run / "summary.json").exists()
    assert attempt("none", resume) == 0

    assert hidden(run) == []
    a, b = load_training_checkpoint(ref / "last.pt"), load_training_checkpoint(run / "last.pt")
    assert a["global_step"] == b["global_step"] == 9
    for part in ("model", "ema"):
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k]))
    assert [r["val_top1"] for r in a["history"]] == [r["val_top1"] for r in b["history"]]
    fa = fastvit.load_model(ref / "model_reparam.safetensors").state_dict()
    fb = fastvit.load_model(run / "model_reparam.safetensors").state_dict()
    assert all(torch.equal(v, fb[k]) for k, v in fa.items())
    assert (
        json.loads((run / "summary.json").read_text())["top1"]
        == json.loads((ref / "summary.json").read_text())["top1"]
    )
