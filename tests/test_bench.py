"""`fastvit bench`: timing statistics, FLOP counts, a tiny end-to-end run, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastvit.bench import (
    RunnerSpec,
    build_runner,
    count_flops,
    format_table,
    measure,
    peak_memory_mb,
    run_benchmark,
    time_interleaved,
    write_json,
    write_png,
)
from fastvit.cli.main import main
from fastvit.errors import ConfigError


def test_time_interleaved_orders_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock (no sleeping, so load cannot change the result): iterations per round
    are calibrated to equal time, the order rotates each round, statistics are exact."""
    now = [0.0]
    calls: list[str] = []
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def runner(name: str, durations: list[float]):
        def f() -> None:
            now[0] += durations[len(calls) % len(durations)]
            calls.append(name)

        return f

    rounds_seen: list[int] = []
    fast, slow = time_interleaved(
        [runner("a", [0.001]), runner("b", [0.004])],
        warmup=1,
        rounds=3,
        round_time=0.0125,
        on_round=rounds_seen.append,
    )
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up + one calibration call each
    # 12 fast / 3 slow calls per round (equal time, not equal calls); order rotates per round
    assert calls[4:] == ["a"] * 12 + ["b"] * 3 + ["b"] * 3 + ["a"] * 12 + ["a"] * 12 + ["b"] * 3
    assert rounds_seen == [0, 1, 2]
    assert len(fast.samples) == 36 and len(slow.samples) == 9
    assert fast.median_ms == pytest.approx(1.0) and slow.median_ms == pytest.approx(4.0)

    calls.clear()
    (mixed,) = time_interleaved(
        [runner("c", [0.001] * 8 + [0.005, 0.009])], warmup=1, rounds=1, round_time=0.0205
    )
    assert len(mixed.samples) == 20  # calibrated on one 1 ms call
    assert mixed.p10_ms == pytest.approx(1.0) and mixed.median_ms == pytest.approx(1.0)
    assert mixed.p90_ms == pytest.approx(5.0) and mixed.mean_ms == pytest.approx(2.2)


def test_flop_count_matches_paper_scale() -> None:
    # FastViT-T8: 0.7 GMACs at 256x256 (paper); our counter sees convs + linears exactly.
    flops = count_flops("fastvit_t8", 256)
    assert flops / 2e9 == pytest.approx(0.685, abs=0.01)
    assert count_flops("fastvit_t8", 256, impl="timm") == pytest.approx(flops, rel=1e-3)


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path: Path) -> None:
    result = run_benchmark(
        ["fastvit_t8"],
        batches=[1, 2],
        size=64,
        backends=["unfused", "eager", "onnxruntime"],
        threads=1,
        compare_timm=True,
        warmup=1,
        rounds=2,
        round_time=0.02,
        memory=False,
    )
    rows = result.rows
    assert len(rows) == 3 * 2 * 2  # backends x batches x (ours, timm)
    for r in rows:
        assert r.median_ms > 0 and r.p90_ms >= r.median_ms and r.samples >= 2
        assert r.throughput == pytest.approx(r.batch / (r.median_ms / 1e3))
        assert r.roofline_ms == pytest.approx(r.gflop * r.batch / result.sgemm_gflops * 1e3)
    assert result.sgemm_gflops > 0
    kinds = {(q["kind"], q["backend"], q["batch"]) for q in result.ratios}
    assert ("fastvit/timm", "eager", 1) in kinds and ("fastvit unfused/eager", "eager", 2) in kinds
    table = format_table(result)
    assert "x roofline" in table and "fastvit/timm" in table
    doc = json.loads(write_json(result, tmp_path / "b.json").read_text())
    assert len(doc["rows"]) == 12 and doc["machine"]["threads"] == 1
    png = write_png(result, tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_peak_memory_in_child_process(tmp_path: Path) -> None:
    spec = RunnerSpec("fastvit_t8", "onnxruntime", 1, 64, threads=1, cache_dir=str(tmp_path))
    mb = peak_memory_mb(spec, warmup=1)
    assert mb is not None and 5 < mb < 2000  # ~14 MB of weights plus workspaces
    assert (tmp_path / "fastvit_fastvit_t8_64.onnx").exists()


def test_runners_agree_with_eager() -> None:
    ref = build_runner(RunnerSpec("fastvit_t8", "eager", 1, 64, threads=1)).fn()
    for backend in ("channels_last", "torchscript", "unfused"):
        out = build_runner(RunnerSpec("fastvit_t8", backend, 1, 64, threads=1)).fn()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_cli_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "fastvit_t8",
                "--size",
                "32",
                "--backend",
                "eager",
                "--rounds",
                "1",
                "--round-time",
                "0.01",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--no-memory",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "fastvit_t8" in text and "median ms" in text
    assert "in one process" in text  # one runtime: no reason to isolate
    assert (out / "bench.json").exists() and (out / "bench.png").exists()
    assert json.loads((out / "bench.json").read_text())["config"]["isolated"] is False


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["--size", "100"], "multiple of 32"),
        (["--batch", "1,x"], "--batch must be comma-separated integers"),
        (["fastvit_t99"], "unknown variant"),
    ],
)
def test_cli_bench_bad_input(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv, "--rounds", "1", "--no-memory", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_bad_backend_raises() -> None:
    with pytest.raises(ConfigError):
        build_runner(RunnerSpec("fastvit_t8", "onnxruntime-int8", 1, 64, impl="timm"))


def test_isolated_benchmark_times_each_runner_in_its_own_process() -> None:
    """``isolate=True``: every runner (and the sgemm) is built and timed in a child process,
    interleaved; the table says so."""
    result = run_benchmark(
        ["fastvit_t8"],
        size=32,
        backends=["eager"],
        threads=1,
        warmup=1,
        rounds=2,
        round_time=0.02,
        memory=False,
        isolate=True,
    )
    assert [r.backend for r in result.rows] == ["eager"]
    assert all(r.samples >= 2 and r.median_ms > 0 for r in result.rows)
    assert result.config["isolated"] is True and result.sgemm_gflops > 0
    assert "each runner in its own process" in format_table(result)


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_isolated_timing_reports_a_failing_child_in_one_line() -> None:
    with pytest.raises(ConfigError, match="a timing process failed: ConfigError: unknown backend"):
        measure.time_isolated(
            [(measure.runner_fn, (RunnerSpec("fastvit_t8", "tensorrt", 1, 32),))], rounds=1
        )


def test_isolation_only_when_openvino_shares_the_run() -> None:
    """OpenVINO slows other runtimes down in the same process: a run mixing it with another
    runtime is isolated by default; a run of one runtime family stays in one process."""
    from fastvit.bench.core import needs_isolation

    def specs(*backends: str) -> list[RunnerSpec]:
        return [RunnerSpec("fastvit_t8", b, 1, 32) for b in backends]

    assert needs_isolation(specs("onnxruntime", "openvino-int8"))
    assert needs_isolation(specs("eager", "openvino-bf16"))
    assert needs_isolation([*specs("onnxruntime"), RunnerSpec("m.xml", "file", 1, 32)])
    assert not needs_isolation(specs("openvino-f32", "openvino-int8"))
    assert not needs_isolation(specs("eager", "onnxruntime", "torchscript"))
    assert not needs_isolation([*specs("onnxruntime"), RunnerSpec("m.onnx", "file", 1, 32)])
