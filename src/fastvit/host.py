"""What the CPU can do: model name, cores and the ISA features that decide which kernels run.

A benchmark only means something next to the hardware it ran on: int8 is fast where the CPU
has a dot-product instruction (AVX-512 VNNI, AVX-VNNI, AMX-INT8, ARM dotprod) and bf16 where
it has bf16 arithmetic (AVX-512 BF16, AMX-BF16, ARM BF16). Without them runtimes emulate
(PyTorch) or quietly run f32 (OpenVINO), and timing that as "bf16" would mislead.

The facts come from ``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, and otherwise from
PyTorch's ATen CPU capability when torch is already imported (never imported here). Parsing
is pure (:func:`parse_cpuinfo`, :func:`parse_sysctl` take the text), so tests feed canned
texts; :func:`host_info` reads this machine once per process.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: ARM CPU implementer codes (``CPU implementer`` in /proc/cpuinfo) and a few known parts.
_ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x43": "Cavium",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
_ARM_PARTS = {
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0xc0", "0xac3"): "Ampere-1",
}
#: macOS ``sysctl`` keys (value 1) -> the Linux flag name they mean.
_SYSCTL_FLAGS = {
    "hw.optional.neon": "asimd",
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SVE": "sve",
    "hw.optional.arm.FEAT_SVE2": "sve2",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.fma": "fma",
}
#: Words of ``machdep.cpu.features`` / ``leaf7_features`` (Intel Macs) -> Linux flag names.
_SYSCTL_WORDS = {
    "FMA": "fma",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "AVXVNNI": "avx_vnni",
}
#: torch.backends.cpu.get_cpu_capability() -> flags it implies (only used without /proc or
#: sysctl, e.g. on Windows, and only when torch is already imported).
_TORCH_CAPABILITY = {
    "AVX2": {"avx2", "fma"},
    "AVX512": {"avx2", "fma", "avx512f"},
    "SVE": {"asimd", "sve"},
    "SVE256": {"asimd", "sve"},
}


def _is_arm(arch: str) -> bool:
    return arch.lower().startswith(("aarch64", "arm"))


def _is_x86(arch: str) -> bool:
    return arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class HostInfo:
    """One CPU's identity and the ISA features that matter for inference kernels.

    The x86 fields are False on ARM and the ARM fields False on x86. ``source`` says where the
    flags came from: ``"/proc/cpuinfo"``, ``"sysctl"``, ``"torch"`` or ``"unknown"`` (then
    every flag is False and :attr:`known` is False: absence was not observed).
    """

    model: str
    vendor: str
    arch: str
    logical_cores: int
    source: str = "unknown"
    # x86
    fma: bool = False
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False
    amx_bf16: bool = False
    amx_int8: bool = False
    # ARM
    neon: bool = False  # Advanced SIMD ("asimd" on aarch64)
    dotprod: bool = False  # SDOT/UDOT ("asimddp")
    i8mm: bool = False  # int8 matrix multiply (SMMLA)
    arm_bf16: bool = False  # BFDOT/BFMMLA ("bf16")
    sve: bool = False
    sve2: bool = False

    @property
    def is_x86(self) -> bool:
        """An x86 CPU (x86_64 / AMD64 / i686)."""
        return _is_x86(self.arch)

    @property
    def is_arm(self) -> bool:
        """An ARM CPU (aarch64 / arm64 / armv7)."""
        return _is_arm(self.arch)

    @property
    def known(self) -> bool:
        """Whether the ISA flags were read (else their absence means nothing)."""
        return self.source != "unknown"

    @property
    def int8_dot_product(self) -> bool:
        """An int8 dot-product instruction: AVX-512 VNNI, AVX-VNNI, AMX-INT8 or ARM dotprod.

        Without it int8 GEMMs widen to int16/int32 and are rarely faster than f32.
        """
        return self.avx512_vnni or self.avx_vnni or self.amx_int8 or self.dotprod

    @property
    def bf16_native(self) -> bool:
        """bf16 arithmetic in hardware: AVX-512 BF16, AMX-BF16 or ARM BF16."""
        return self.avx512_bf16 or self.amx_bf16 or self.arm_bf16

    @property
    def amx(self) -> bool:
        """Any AMX tile extension (Sapphire Rapids and later)."""
        return self.amx_tile or self.amx_bf16 or self.amx_int8

    @property
    def isa_level(self) -> str:
        """The widest vector/matrix extension: 'AMX', 'AVX-512', 'AVX2', 'SVE2', 'SVE', 'NEON',
        or the architecture name when none is known."""
        for name, present in (
            ("AMX", self.amx),
            ("AVX-512", self.avx512f),
            ("AVX2", self.avx2),
            ("SVE2", self.sve2),
            ("SVE", self.sve),
            ("NEON", self.neon),
        ):
            if present:
                return name
        return self.arch

    def label(self) -> str:
        """'AMD EPYC, AVX2': the CPU in a few words, for one-line messages."""
        return f"{self.model}, {self.isa_level}"

    def isa_summary(self) -> str:
        """What the CPU has and, in brackets, what matters and is missing.

        'AVX2 FMA (no AVX-512, no VNNI, no AMX)' on an AVX2-only EPYC; on ARM e.g.
        'NEON DOTPROD (no SVE, no I8MM, no BF16)'.
        """
        if not self.known:
            return f"unknown ISA ({self.arch}: no /proc/cpuinfo or sysctl flags)"
        if self.is_arm:
            have = [
                ("NEON", self.neon),
                ("DOTPROD", self.dotprod),
                ("I8MM", self.i8mm),
                ("BF16", self.arm_bf16),
                ("SVE", self.sve),
                ("SVE2", self.sve2),
            ]
            missing = [n for n, p in have if not p and (n != "SVE2" or self.sve)]
        else:
            have = [
                ("AVX2", self.avx2),
                ("FMA", self.fma),
                ("AVX-512", self.avx512f),
                ("AVX512-VNNI", self.avx512_vnni),
                ("AVX-VNNI", self.avx_vnni),
                ("AVX512-BF16", self.avx512_bf16),
                ("AMX-BF16", self.amx_bf16),
                ("AMX-INT8", self.amx_int8),
            ]
            missing = []
            if not self.avx512f:
                missing.append("AVX-512")
            if not (self.avx512_vnni or self.avx_vnni or self.amx_int8):
                missing.append("VNNI")
            if self.avx512f and not self.bf16_native:
                missing.append("BF16")  # (without AVX-512 or AMX there is no x86 bf16 at all)
            if not self.amx:
                missing.append("AMX")
        text = " ".join(n for n, p in have if p) or "no SIMD extensions"
        if missing:
            text += " (" + ", ".join(f"no {m}" for m in missing) + ")"
        return text

    def describe(self) -> str:
        """'AMD EPYC (x86_64, 2 logical cores): AVX2 FMA (no AVX-512, no VNNI, no AMX)'."""
        return (
            f"{self.model} ({self.arch}, {self.logical_cores} logical cores): {self.isa_summary()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field plus the derived facts, for JSON (bench.json's ``machine.host``)."""
        return {
            **asdict(self),
            "int8_dot_product": self.int8_dot_product,
            "bf16_native": self.bf16_native,
            "isa_summary": self.isa_summary(),
        }


def _from_flags(
    model: str, vendor: str, arch: str, cores: int, flags: set[str], source: str
) -> HostInfo:
    """A HostInfo from Linux-style flag names (x86 ``flags`` / ARM ``Features`` words)."""
    x86, arm = _is_x86(arch), _is_arm(arch)
    f = {w.lower() for w in flags}

    def has(name: str, on: bool) -> bool:
        return on and name in f

    return HostInfo(
        model=model or "unknown CPU",
        vendor=vendor or "unknown",
        arch=arch,
        logical_cores=max(1, cores),
        source=source,
        fma=has("fma", x86),
        avx2=has("avx2", x86),
        avx512f=has("avx512f", x86),
        avx512_vnni=has("avx512_vnni", x86),
        avx_vnni=has("avx_vnni", x86),
        avx512_bf16=has("avx512_bf16", x86),
        amx_tile=has("amx_tile", x86),
        amx_bf16=has("amx_bf16", x86),
        amx_int8=has("amx_int8", x86),
        neon=arm and ("asimd" in f or "neon" in f),
        dotprod=has("asimddp", arm),
        i8mm=has("i8mm", arm),
        arm_bf16=has("bf16", arm),
        sve=has("sve", arm),
        sve2=has("sve2", arm),
    )


def parse_cpuinfo(text: str, arch: str | None = None) -> HostInfo:
    """Host facts from the text of Linux's ``/proc/cpuinfo`` (first processor's fields).

    ``arch`` defaults to this machine's (``platform.machine()``); tests pass it with the text.
    ARM kernels print no model name: it is built from ``CPU implementer`` / ``CPU part``.
    """
    arch = arch or platform.machine() or "unknown"
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        fields.setdefault(key, value)  # the first processor's value
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Processor") or ""
    vendor = fields.get("vendor_id", "")
    implementer = fields.get("CPU implementer", "").lower()
    if implementer:
        vendor = vendor or _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
        part = fields.get("CPU part", "").lower()
        if not model or model.startswith("ARMv"):  # 32-bit kernels: "ARMv7 Processor rev 4"
            model = _ARM_PARTS.get((implementer, part)) or f"{vendor} part {part or '?'}"
    source = "/proc/cpuinfo" if flags else "unknown"
    return _from_flags(model, vendor, arch, processors or 1, flags, source)


def parse_sysctl(text: str, arch: str | None = None) -> HostInfo:
    """Host facts from macOS ``sysctl`` output (``key: value`` lines)."""
    arch = arch or platform.machine() or "unknown"
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    flags = {flag for key, flag in _SYSCTL_FLAGS.items() if values.get(key) == "1"}
    for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
        flags |= {_SYSCTL_WORDS[w] for w in values.get(key, "").split() if w in _SYSCTL_WORDS}
    if _is_arm(arch) and values.get("hw.optional.arm64") == "1":
        flags.add("asimd")  # every arm64 Mac has Advanced SIMD
    model = values.get("machdep.cpu.brand_string", "")
    vendor = values.get("machdep.cpu.vendor") or ("Apple" if model.startswith("Apple") else "")
    try:
        cores = int(values.get("hw.logicalcpu", "") or 0)
    except ValueError:
        cores = 0
    return _from_flags(
        model, vendor, arch, cores or os.cpu_count() or 1, flags, "sysctl" if flags else "unknown"
    )


_SYSCTL_KEYS = (
    "machdep.cpu.brand_string",
    "machdep.cpu.vendor",
    "machdep.cpu.features",
    "machdep.cpu.leaf7_features",
    "hw.logicalcpu",
    "hw.optional",
)


@lru_cache(maxsize=1)
def host_info() -> HostInfo:
    """This machine's :class:`HostInfo`, read once per process (no torch import).

    Linux: ``/proc/cpuinfo``; macOS: ``sysctl``; elsewhere ``platform`` for the name and, if
    torch is already imported, its CPU capability for the flags.
    """
    arch = platform.machine() or "unknown"
    cores = os.cpu_count() or 1
    info: HostInfo | None = None
    with contextlib.suppress(OSError):
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"), arch)
    if (info is None or not info.known) and sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", *_SYSCTL_KEYS], capture_output=True, text=True, timeout=5
            ).stdout  # (unknown keys go to stderr; the known ones still print)
            info = parse_sysctl(out, arch)
        except (OSError, subprocess.SubprocessError):
            pass
    if info is None or not info.known:
        flags: set[str] = set()
        torch = sys.modules.get("torch")
        if torch is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                flags = set(_TORCH_CAPABILITY.get(torch.backends.cpu.get_cpu_capability(), ()))
        model = (info.model if info is not None and info.model != "unknown CPU" else "") or (
            platform.processor() or arch
        )
        info = _from_flags(model, "", arch, cores, flags, "torch" if flags else "unknown")
    if info.logical_cores != cores:  # online CPUs, as os.cpu_count() sees them
        info = HostInfo(**{**asdict(info), "logical_cores": cores})
    return info
