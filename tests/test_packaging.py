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

# top-level modules of the optional extras (train, export, bench, openvino, coreml, detection)
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
    "torchmetrics",
    "pycocotools",
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
        "torchmetrics",
        "pycocotools",
    }
    assert optional <= in_extras and not optional & core
    assert {"torch", "torchvision", "timm", "safetensors"} <= core
    assert "fastvit[train,export,bench,openvino,detection]" in extras["test"]
    assert "detection" in extras["all"][0]


def test_quick_commands_import_neither_torch_nor_timm(tmp_path: Path) -> None:
    """`import fastvit`, `fastvit --version`, `fastvit list [--pretrained]` and a cached
    `fastvit info` import no torch/timm (their import alone took ~5 s: timm imports
    torchvision.models and torch._dynamo), so `fastvit info` prints in well under 3 s."""
    proc = _run(f"""
        import io, os, sys, contextlib
        os.environ["XDG_CACHE_HOME"] = {str(tmp_path)!r}
        import fastvit
        from fastvit.cli.main import main
        assert "load_model" in dir(fastvit) and "Any" not in dir(fastvit)
        for argv in (["--version"], ["list"], ["list", "--pretrained"]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
        print(sorted({{"torch", "timm", "torchvision"}} & set(sys.modules)))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    # `info` at the default size reads the shipped table; at another size the first call
    # computes (torch) and caches, the second reads the cache: neither then imports torch
    for size in ("256", "224"):
        argv = ["info", "fastvit_t8", "fastvit_sa12", "--size", size]
        fill = _run(f"""
            import os; os.environ["XDG_CACHE_HOME"] = {str(tmp_path)!r}
            from fastvit.cli.main import main
            main({argv!r})
        """)
        assert fill.returncode == 0, fill.stderr
        cached = _run(f"""
            import os, sys, time; os.environ["XDG_CACHE_HOME"] = {str(tmp_path)!r}
            t = time.perf_counter()
            from fastvit.cli.main import main
            main({argv!r})
            print("torch" in sys.modules, "timm" in sys.modules, time.perf_counter() - t)
        """)
        assert cached.returncode == 0, cached.stderr
        *table, last = cached.stdout.strip().splitlines()
        assert table == fill.stdout.strip().splitlines() and f"GMACs @{size}" in table[0]
        torch_loaded, timm_loaded, seconds = last.split()
        assert (torch_loaded, timm_loaded) == ("False", "False") and float(seconds) < 3.0, last


def test_lazy_api_lists_every_name_and_resolves_it() -> None:
    """`__all__` of the lazy packages names exactly what they resolve; the written-out
    normalisation constants equal timm's."""
    import timm.data

    import fastvit
    import fastvit.models
    import fastvit.pretrained
    from fastvit import card

    for pkg, extra in (
        (fastvit, {"__version__"}),
        (fastvit.models, set()),
        (fastvit.pretrained, set()),
    ):
        assert set(pkg.__all__) == set(pkg._EXPORTS) | extra
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        fastvit.nope  # noqa: B018
    assert tuple(timm.data.IMAGENET_DEFAULT_MEAN) == card.IMAGENET_MEAN
    assert tuple(timm.data.IMAGENET_DEFAULT_STD) == card.IMAGENET_STD
    assert tuple(timm.data.OPENAI_CLIP_MEAN) == card.OPENAI_CLIP_MEAN
    assert tuple(timm.data.OPENAI_CLIP_STD) == card.OPENAI_CLIP_STD


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_lazy_names_are_not_shadowed_by_submodules() -> None:
    """`from fastvit.models import RepMixerViTBlock, repmixer_vit` gave the submodule for the
    second name (importing its module for the first one set the package attribute)."""
    proc = _run("""
        import types
        from fastvit.models import RepMixerViTBlock, repmixer_vit
        import fastvit.models.vit
        import fastvit.models
        print(callable(repmixer_vit) and not isinstance(repmixer_vit, types.ModuleType),
              fastvit.models.repmixer_vit is repmixer_vit, isinstance(RepMixerViTBlock, type))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True"], proc.stdout
