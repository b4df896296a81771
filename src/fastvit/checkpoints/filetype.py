"""What kind of file is this? Sniffed from the first bytes, before any loader touches it.

A TorchScript archive, an ONNX or OpenVINO model, an HTML page from a failed download or random
bytes handed to a checkpoint loader should be named for what they are, together with the command
that takes them, instead of being reported as a "corrupt checkpoint". Only a few header bytes
(and, for zip archives, the member names) are read; nothing is unpickled or executed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from fastvit.errors import CheckpointError

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch"  # torch.save (zip format, the default since torch 1.6)
TORCH_LEGACY = "torch-legacy"  # torch.save(_use_new_zipfile_serialization=False) / plain pickle
TORCHSCRIPT = "torchscript"
ONNX = "onnx"
OPENVINO_XML = "openvino-xml"
OPENVINO_BIN = "openvino-bin"
ZIP = "zip"
HTML = "html"
LFS_POINTER = "git-lfs-pointer"
TEXT = "text"
UNKNOWN = "unknown"

#: Kinds a checkpoint loader can read (weights only).
CHECKPOINT_KINDS = (SAFETENSORS, TORCH_ZIP, TORCH_LEGACY)

_ONNX_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A}  # ModelProto fields 2..9


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    n = int.from_bytes(head[:8], "little")
    return len(head) >= 9 and head[8:9] == b"{" and 8 + n <= size


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()[:2000]
    except (zipfile.BadZipFile, OSError, ValueError):
        return TORCH_ZIP  # truncated zip: let the torch reader report it as damaged
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return TORCHSCRIPT
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return TORCH_ZIP
    return ZIP


def detect_file_type(path: str | os.PathLike) -> str:
    """One of the kind constants of this module, from the file's content (suffix as a tiebreak)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(512)
    if _looks_like_safetensors(head, size):
        return SAFETENSORS
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return _zip_kind(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return TORCH_LEGACY
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<?xml") or text.startswith(b"<net"):
        return OPENVINO_XML if b"<net" in head.lower() else TEXT
    if text.startswith((b"<!doctype html", b"<html")):
        return HTML
    if text.startswith(b"version https://git-lfs"):
        return LFS_POINTER
    if len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 15 and head[2] in _ONNX_FIELD_TAGS:
        return ONNX  # ModelProto: field 1 (ir_version, a small varint), then another field
    if path.suffix.lower() == ".bin" and path.with_suffix(".xml").is_file():
        return OPENVINO_BIN
    if path.suffix.lower() == ".onnx":
        return ONNX
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return TEXT
    return UNKNOWN


def describe_kind(path: str | os.PathLike, kind: str) -> str:
    """'<path> is <what it is>; <which command takes it>' for a file that is not a checkpoint."""
    p = str(path)
    return {
        TORCHSCRIPT: f"{p} is a TorchScript model (an export), not a checkpoint; run it with "
        f"`fastvit predict {p} IMAGES`, or export again from the original checkpoint",
        ONNX: f"{p} is an ONNX model (an export), not a checkpoint; run it with "
        f"`fastvit predict {p} IMAGES`, or export again from the original checkpoint",
        OPENVINO_XML: f"{p} is an OpenVINO model (an export), not a checkpoint; use the "
        "checkpoint it was exported from",
        OPENVINO_BIN: f"{p} holds the weights of an OpenVINO model (an export), not a "
        "checkpoint; use the checkpoint it was exported from",
        ZIP: f"{p} is a zip archive but not a torch checkpoint (no data.pkl inside); give a "
        ".safetensors or .pth checkpoint",
        HTML: f"{p} is an HTML page, not a checkpoint (a failed download?); download it again",
        LFS_POINTER: f"{p} is a Git LFS pointer, not the file itself; run `git lfs pull` to "
        "fetch the weights",
        TEXT: f"{p} is a text file, not a checkpoint; give a .safetensors or .pth checkpoint",
        UNKNOWN: f"{p} is not a checkpoint: neither safetensors nor a torch file (it starts "
        f"with bytes {_first_bytes(path)}); give a .safetensors or .pth checkpoint",
    }.get(kind, f"{p} is not a checkpoint ({kind})")


def _first_bytes(path: str | os.PathLike, n: int = 4) -> str:
    with open(path, "rb") as f:
        return " ".join(f"{b:02x}" for b in f.read(n))


def require_checkpoint(path: str | os.PathLike) -> str:
    """The kind of ``path`` when a checkpoint loader can read it; else a one-line CheckpointError
    saying what the file is and which command takes it."""
    kind = detect_file_type(path)
    if kind in CHECKPOINT_KINDS:
        return kind
    if kind in (UNKNOWN, TEXT) and Path(path).suffix.lower() == ".safetensors":
        return SAFETENSORS  # let the safetensors reader report the damage
    raise CheckpointError(describe_kind(path, kind))
