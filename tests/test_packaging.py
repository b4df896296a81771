"""The core install: `import fastvit` and the model/reparam/checkpoint API need no extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# top-level modules of the optional extras (train, export, bench, openvino, coreml)
EXTRAS = (
    "onnx",
    "onnxruntime",
    "onnxscript",
    "tensorboard",
    "matplotlib",
    "sklearn",
    "openvino",
    "nncf",
    "coremltools",
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_core_api_imports_no_optional_extra(tmp_path: Path) -> None:
    """`import fastvit` and build, fuse, save, load: no fastvit module imports an extra (each
    attempt fails as if it were not installed) and none is loaded (one subprocess: a fresh
    interpreter costs seconds here)."""
    proc = _run(f"""
        import builtins, sys

        extras, tried, real_import = {EXTRAS!r}, [], builtins.__import__

        def guarded(name, globals=None, locals=None, fromlist=(), level=0):
            importer = (globals or {{}}).get("__name__", "")
            wanted = name.split(".")[0] in extras or (
                name == "torch.utils" and "tensorboard" in (fromlist or ())
                or name.startswith("torch.utils.tensorboard"))
            if level == 0 and wanted and importer.startswith("fastvit"):
                tried.append(f"{{importer}} imports {{name}}")
                raise ImportError(f"{{name}} is not installed")
            return real_import(name, globals, locals, fromlist, level)

        builtins.__import__ = guarded
        import torch
        import fastvit, fastvit.models, fastvit.layers, fastvit.reparam, fastvit.checkpoints
        import fastvit.cli.main
        torch.set_num_threads(1)
        model = fastvit.create_model("fastvit_t8", num_classes=3)
        fused = fastvit.reparameterize(model, verify=True, input_shape=(1, 3, 32, 32))
        path = fastvit.save_model(fused, {str(tmp_path / "m.safetensors")!r})
        back = fastvit.load_model(path)
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            print(float((back(x) - model.eval()(x)).abs().max()))
        loaded = {{m.split(".")[0] for m in sys.modules}} & set(extras)
        print("; ".join(tried + sorted(loaded)))
    """)
    assert proc.returncode == 0, proc.stderr
    diff, imported = proc.stdout.split("\n")[:2]
    assert imported == "" and float(diff) <= 1e-5, proc.stdout


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_extras_cover_what_the_code_imports() -> None:
    """Every optional distribution the code imports is in an extra, none in the core; the
    `test` extra pulls every extra the tests exercise."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    in_extras = {_name(r) for reqs in extras.values() for r in reqs}
    optional = {
        "onnx",
        "onnxruntime",
        "onnxscript",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
        "openvino",
        "nncf",
        "coremltools",
        "tqdm",
    }
    assert optional <= in_extras and not optional & core
    assert {"torch", "torchvision", "timm", "safetensors"} <= core
    assert "fastvit[train,export,bench,openvino]" in extras["test"]
