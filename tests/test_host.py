"""Host facts (`fastvit.host`): canned /proc/cpuinfo and sysctl texts, the derived properties,
the host recorded in bench.json, bf16 backends skipped on a CPU without bf16 hardware, and
the quick commands (`--help`, `info`, `info --host`) importing no heavy package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import fastvit.host
from fastvit.bench import core
from fastvit.bench.measure import Timing
from fastvit.bench.runners import emulated_bf16
from fastvit.cli.main import main
from fastvit.errors import ConfigError
from fastvit.host import HostInfo, host_info, parse_cpuinfo, parse_sysctl

ROOT = Path(__file__).resolve().parents[1]

SAPPHIRE_RAPIDS = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 \
sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm fsgsbase bmi1 avx2 smep \
bmi2 erms avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw \
avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd avx512vbmi umip pku ospke \
waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid \
movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu avx2 avx512f amx_tile
"""

EPYC_AVX2 = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 \
sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm \
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibpb vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha_ni xsaveopt xsavec \
xgetbv1 clzero xsaveerptr virt_ssbd arat

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu fma avx2
"""

NEOVERSE_V1 = """\
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs \
paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1
"""

NEOVERSE_N1 = """\
processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1
"""

APPLE_M2_SYSCTL = """\
machdep.cpu.brand_string: Apple M2
hw.logicalcpu: 8
hw.optional.arm64: 1
hw.optional.neon: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_SME: 0
"""


def test_sapphire_rapids_has_amx_vnni_and_bf16() -> None:
    h = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert (h.model, h.vendor, h.arch, h.logical_cores) == (
        "Intel(R) Xeon(R) Platinum 8480+",
        "GenuineIntel",
        "x86_64",
        2,
    )
    assert h.source == "/proc/cpuinfo" and h.known
    assert h.avx2 and h.fma and h.avx512f and h.avx512_vnni and h.avx_vnni and h.avx512_bf16
    assert h.amx_tile and h.amx_bf16 and h.amx_int8
    assert not (h.neon or h.sve or h.arm_bf16 or h.dotprod)
    assert h.int8_dot_product and h.bf16_native and h.isa_level == "AMX"
    assert h.isa_summary() == (
        "AVX2 FMA AVX-512 AVX512-VNNI AVX-VNNI AVX512-BF16 AMX-BF16 AMX-INT8"
    )


def test_epyc_avx2_only() -> None:
    h = parse_cpuinfo(EPYC_AVX2, "x86_64")
    assert (h.model, h.vendor, h.logical_cores) == ("AMD EPYC", "AuthenticAMD", 2)
    assert h.avx2 and h.fma
    assert not (h.avx512f or h.avx512_vnni or h.avx_vnni or h.avx512_bf16 or h.amx)
    assert not h.int8_dot_product and not h.bf16_native
    assert h.isa_summary() == "AVX2 FMA (no AVX-512, no VNNI, no AMX)"
    assert h.label() == "AMD EPYC, AVX2"
    assert h.is_x86 and not h.is_arm
    assert h.describe() == (
        "AMD EPYC (x86_64, 2 logical cores): AVX2 FMA (no AVX-512, no VNNI, no AMX)"
    )


@pytest.mark.parametrize(
    "extra,summary,int8,bf16",
    [  # AVX-512 without VNNI/BF16 (Skylake-SP); Zen 4 (VNNI + BF16, no AMX)
        ("avx512f avx512bw", "AVX2 FMA AVX-512 (no VNNI, no BF16, no AMX)", False, False),
        (
            "avx512f avx512_vnni avx512_bf16",
            "AVX2 FMA AVX-512 AVX512-VNNI AVX512-BF16 (no AMX)",
            True,
            True,
        ),
        ("avx_vnni", "AVX2 FMA AVX-VNNI (no AVX-512, no AMX)", True, False),  # Alder Lake
    ],
)
def test_x86_generations(extra: str, summary: str, int8: bool, bf16: bool) -> None:
    text = f"processor : 0\nvendor_id : GenuineIntel\nmodel name : X\nflags : fma avx2 {extra}\n"
    h = parse_cpuinfo(text, "x86_64")
    assert (h.isa_summary(), h.int8_dot_product, h.bf16_native) == (summary, int8, bf16)


def test_arm_neoverse() -> None:
    v1 = parse_cpuinfo(NEOVERSE_V1, "aarch64")
    assert (v1.model, v1.vendor, v1.logical_cores) == ("Neoverse-V1", "ARM", 1)
    assert v1.neon and v1.dotprod and v1.i8mm and v1.arm_bf16 and v1.sve and not v1.sve2
    assert not (v1.avx2 or v1.avx512_bf16)
    assert v1.int8_dot_product and v1.bf16_native and v1.isa_level == "SVE"
    assert v1.is_arm and not v1.is_x86
    assert v1.isa_summary() == "NEON DOTPROD I8MM BF16 SVE (no SVE2)"
    n1 = parse_cpuinfo(NEOVERSE_N1, "aarch64")
    assert n1.model == "Neoverse-N1" and n1.int8_dot_product and not n1.bf16_native
    assert n1.isa_summary() == "NEON DOTPROD (no I8MM, no BF16, no SVE)"
    assert n1.label() == "Neoverse-N1, NEON"
    # the same words on an x86 host mean nothing (and x86 words nothing on ARM)
    assert not parse_cpuinfo(NEOVERSE_V1, "x86_64").bf16_native
    assert not parse_cpuinfo(SAPPHIRE_RAPIDS, "aarch64").amx


def test_macos_sysctl_and_unknown_hosts() -> None:
    m2 = parse_sysctl(APPLE_M2_SYSCTL, "arm64")
    assert (m2.model, m2.vendor, m2.logical_cores, m2.source) == ("Apple M2", "Apple", 8, "sysctl")
    assert m2.neon and m2.dotprod and m2.i8mm and m2.arm_bf16 and not m2.sve
    assert m2.int8_dot_product and m2.bf16_native
    intel_mac = parse_sysctl(
        "machdep.cpu.brand_string: Intel(R) Core(TM) i7-1068NG7\nmachdep.cpu.vendor: GenuineIntel\n"
        "hw.optional.avx2_0: 1\nhw.optional.avx512f: 1\nhw.optional.fma: 1\n"
        "machdep.cpu.leaf7_features: AVX2 AVX512F AVX512VNNI SHA\n",
        "x86_64",
    )
    assert intel_mac.avx512_vnni and intel_mac.int8_dot_product and not intel_mac.bf16_native
    unknown = parse_cpuinfo("", "riscv64")
    assert not unknown.known and not unknown.bf16_native and not unknown.int8_dot_product
    assert unknown.isa_summary().startswith("unknown ISA (riscv64")
    # unknown flags: nothing is skipped (absence was not observed)
    assert emulated_bf16("openvino-bf16", unknown) is None


def test_host_info_reads_this_machine() -> None:
    h = host_info()
    assert h is host_info()  # read once per process
    assert h.logical_cores == (os.cpu_count() or 1)
    doc = json.loads(json.dumps(h.to_dict()))
    assert doc["isa_summary"] == h.isa_summary()
    assert doc["int8_dot_product"] == h.int8_dot_product and doc["bf16_native"] == h.bf16_native
    assert HostInfo(**{k: v for k, v in doc.items() if k in HostInfo.__dataclass_fields__}) == h
    if Path("/proc/cpuinfo").exists():
        parsed = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert parsed.isa_summary() == h.isa_summary() and parsed.model == h.model


EPYC = parse_cpuinfo(EPYC_AVX2, "x86_64")
SPR = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")


def test_bf16_backends_are_skipped_without_bf16_hardware() -> None:
    assert emulated_bf16("openvino-bf16", EPYC) == (
        "openvino-bf16: skipped, this CPU (AMD EPYC, AVX2) has no bf16 hardware; "
        "OpenVINO would run f32"
    )
    for backend in ("bf16", "bf16-compile"):
        assert emulated_bf16(backend, EPYC) == (
            f"{backend}: skipped, this CPU (AMD EPYC, AVX2) has no bf16 hardware; "
            "PyTorch would emulate bf16, slower than f32"
        )
    assert emulated_bf16("bf16", SPR) is None and emulated_bf16("eager", EPYC) is None


def test_bf16_supported_agrees_with_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvit.export.quantize import bf16_supported, to_bf16

    monkeypatch.setattr(fastvit.host, "host_info", lambda: EPYC)
    assert not bf16_supported()
    conv = nn.Conv2d(3, 4, 1)
    with pytest.raises(ConfigError, match=r"this CPU \(AMD EPYC, AVX2\) has no native bf16"):
        to_bf16(conv)
    forced = to_bf16(conv, allow_emulated=True)  # an explicit choice is honoured
    assert forced.weight.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32


def _fake_bench(monkeypatch: pytest.MonkeyPatch, host: HostInfo) -> list:
    """Run the bench command's logic without building or timing models: every runner "takes"
    2 ms, the sgemm 10 ms; returns the list the timed specs are appended to."""
    seen: list = []

    def fake_time_runners(specs, **kw):
        seen.extend(specs)
        return [Timing([0.002, 0.002]) for _ in specs] + [Timing([0.01, 0.01])]

    monkeypatch.setattr(core, "host_info", lambda: host)
    monkeypatch.setattr(core, "time_runners", fake_time_runners)
    monkeypatch.setattr(core, "count_flops", lambda *a, **k: 1.37e9)
    monkeypatch.setattr(core, "write_png", lambda result, path: Path(path))
    return seen


def _bench(out: Path, *extra: str) -> int:
    common = ["--size", "32", "--threads", "1", "--no-memory", "--quiet", "--out", str(out)]
    return main(["bench", "fastvit_t8", *common, *extra])


def test_bench_json_records_host_and_skipped_bf16(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _fake_bench(monkeypatch, EPYC)
    assert _bench(tmp_path / "a", "--backend", "eager,openvino-bf16,bf16") == 0
    text = capsys.readouterr().out
    reason = emulated_bf16("openvino-bf16", EPYC)
    assert reason in text.splitlines() and "host: AMD EPYC, AVX2 FMA (no AVX-512" in text
    assert [s.backend for s in seen] == ["eager"]
    doc = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert doc["machine"]["host"] == EPYC.to_dict() and doc["machine"]["cpu"] == "AMD EPYC"
    assert doc["skipped"] == [
        {"backend": "openvino-bf16", "reason": reason},
        {"backend": "bf16", "reason": emulated_bf16("bf16", EPYC)},
    ]
    assert [r["backend"] for r in doc["rows"]] == ["eager"]
    assert doc["config"]["backends"] == ["eager", "openvino-bf16", "bf16"]

    # --allow-emulated times them anyway (marked on the specs, so to_bf16 accepts the model)
    seen.clear()
    assert _bench(tmp_path / "b", "--backend", "eager,openvino-bf16", "--allow-emulated") == 0
    assert [(s.backend, s.allow_emulated) for s in seen] == [
        ("eager", True),
        ("openvino-bf16", True),
    ]
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert doc["skipped"] == [] and doc["config"]["allow_emulated"] is True
    capsys.readouterr()

    # only bf16 asked for: a one-line error, before any work
    seen.clear()
    assert _bench(tmp_path / "c", "--backend", "bf16") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to time: bf16: skipped" in err[0], err
    assert "--allow-emulated" in err[0] and seen == []

    # a bf16 host times them
    _fake_bench(monkeypatch, SPR)
    assert _bench(tmp_path / "d", "--backend", "eager,openvino-bf16") == 0
    doc = json.loads((tmp_path / "d" / "bench.json").read_text())
    assert doc["skipped"] == [] and len(doc["rows"]) == 2 and doc["machine"]["host"]["amx_int8"]


def test_info_host_prints_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--host"]) == 0
    lines = capsys.readouterr().out.splitlines()
    h = host_info()
    assert lines[0].split(None, 1) == [
        "cpu",
        f"{h.model} ({h.vendor}, {h.arch}, {h.logical_cores} logical cores)",
    ]
    assert lines[1].startswith(f"isa         {h.isa_summary()}")
    assert any(ln.startswith("torch ") for ln in lines)
    assert main(["info", "--host", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["host"] == h.to_dict() and doc["threads"]["cpus"] >= 1


def test_quick_commands_import_no_heavy_package(tmp_path: Path) -> None:
    """`fastvit --help`, `fastvit info` (shipped table) and `fastvit info --host` import
    neither torch, timm nor a runtime; `--help` imports no command module at all."""
    code = textwrap.dedent(f"""
        import contextlib, io, os, sys
        os.environ["XDG_CACHE_HOME"] = {str(tmp_path)!r}
        from fastvit.cli.main import main
        heavy = ("torch", "timm", "torchvision", "numpy", "onnx", "onnxruntime", "openvino")
        for argv in (["--help"], ["info"], ["info", "--host"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                code = main(argv)
            assert code == 0 and out.getvalue(), (argv, code)
            cli = sorted(m for m in sys.modules if m.startswith("fastvit.cli."))
            print(argv, sorted(set(heavy) & set(sys.modules)), cli)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "['--help'] [] ['fastvit.cli.main']",
        "['info'] [] ['fastvit.cli.checks', 'fastvit.cli.info', 'fastvit.cli.main']",
        "['info', '--host'] [] ['fastvit.cli.checks', 'fastvit.cli.info', 'fastvit.cli.main']",
    ], proc.stdout


def test_bench_auto_names_the_fastest_runtime_for_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    ms = {
        "onnxruntime": 10.0,
        "onnxruntime-int8": 9.0,
        "openvino-f32": 8.0,
        "openvino-bf16": 4.0,
        "openvino-int8": 5.0,
    }
    seen: list = []

    def fake_time_runners(specs, **kw):
        seen.extend(specs)
        return [Timing([ms[s.backend] / 1e3] * 2) for s in specs] + [Timing([0.01, 0.01])]

    _fake_bench(monkeypatch, EPYC)
    monkeypatch.setattr(core, "time_runners", fake_time_runners)
    assert core.auto_backends(EPYC) == [
        "onnxruntime",
        "onnxruntime-int8",
        "openvino-f32",
        "openvino-int8",
    ]  # no bf16 hardware: OpenVINO bf16 would be f32 again
    assert _bench(tmp_path / "a", "--backend", "auto") == 0
    assert [s.backend for s in seen] == core.auto_backends(EPYC)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("auto:"))
    assert line.startswith(
        "auto: fastvit_t8 b1 -> openvino-int8 (5.00 ms, 2.00x onnxruntime) on AMD EPYC, AVX2"
    )
    doc = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert doc["auto"][0]["backend"] == "openvino-int8" and doc["config"]["backends"] == ["auto"]
    assert doc["auto"][0]["speedup"] == pytest.approx(2.0)

    seen.clear()  # a host with bf16 hardware also weighs OpenVINO bf16, which wins here
    _fake_bench(monkeypatch, SPR)
    monkeypatch.setattr(core, "time_runners", fake_time_runners)
    assert "openvino-bf16" in core.auto_backends(SPR)
    assert _bench(tmp_path / "b", "--backend", "auto") == 0
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert doc["auto"][0]["backend"] == "openvino-bf16"
    assert doc["auto"][0]["speedup"] == pytest.approx(2.5)
