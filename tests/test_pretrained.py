"""Pretrained weights by name: registry, downloads (loopback HTTP server only), Hub cache,
MobileCLIP checkpoints, ``create_model``/``load_model`` and the CLI. No network is used:
every URL points at 127.0.0.1 and the Hub runs in offline mode on a pre-populated cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

import fastvit
from conftest import randomize_bn_and_scales
from fastvit.checkpoints import convert_state_dict
from fastvit.cli.main import main as cli
from fastvit.pretrained import PRETRAINED, DownloadError, Source, download_url, registry
from fastvit.pretrained.download import file_sha256
from fastvit.train.modeling import load_init_model

TAG = "fastvit_t8.apple_in1k"
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ loopback server


class _Server:
    """Serves ``files[path] = (body, content_type)`` on 127.0.0.1 with Range support.

    ``interrupt`` (a set of paths): the first GET of such a path announces the full length but
    sends half and closes. Every request's path and Range header is recorded."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.interrupt: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                body, ctype = server.files[self.path]
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start, status = int(rng[6:].split("-")[0]), 206
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.interrupt:
                    server.interrupt.discard(self.path)
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Every test gets its own FASTVIT_HOME and Hub cache; the Hub is offline (no network)."""
    monkeypatch.setenv("FASTVIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def t8() -> nn.Module:
    torch.manual_seed(0)
    model = fastvit.models.create_model("fastvit_t8")
    randomize_bn_and_scales(model, seed=1)
    return model.eval()


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def _use_server(monkeypatch, tag: str, sources: tuple[Source, ...]) -> None:
    """Point the registry entry of ``tag`` at the loopback server (no Hub)."""
    monkeypatch.setitem(
        PRETRAINED, tag, dataclasses.replace(PRETRAINED[tag], hf_hub_id=None, sources=sources)
    )


def _no_stray_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")], list(folder.rglob("*"))


# ------------------------------------------------------------------ registry


def test_registry_covers_every_timm_tag() -> None:
    import timm

    tags = fastvit.list_pretrained()
    assert len(tags) == 21 and sorted(tags) == sorted(timm.list_pretrained("fastvit_*"))
    assert fastvit.list_pretrained("*mci*") == [t for t in tags if "mci" in t]
    for tag in tags:
        e = PRETRAINED[tag]
        tcfg = timm.models.get_pretrained_cfg(tag).to_dict()
        assert e.architecture in fastvit.list_models()
        # sa36: the official code evaluates with crop 0.95 (its "fastvit_m" cfg); timm says 0.9
        crop = 0.95 if tag.startswith("fastvit_sa36") else tcfg["crop_pct"]
        p = e.preprocessing
        assert (e.num_classes, p.crop_pct) == (tcfg["num_classes"], crop), tag
        assert p.mean == pytest.approx(tcfg["mean"]) and p.std == pytest.approx(tcfg["std"])
        hub = tcfg["hf_hub_id"] if tcfg["hf_hub_id"] != "timm/" else f"timm/{tag}"
        assert e.hf_hub_id == hub and e.license == tcfg["license"], tag
    t8 = PRETRAINED[TAG]
    assert [s.url for s in t8.sources] == [
        "https://docs-assets.developer.apple.com/ml-research/models/fastvit/"
        "image_classification_models/fastvit_t8.pth.tar",
        "https://docs-assets.developer.apple.com/ml-research/models/fastvit/"
        "image_classification_models/fastvit_t8_reparam.pth.tar",
    ]
    assert t8.top1 == 76.2 and PRETRAINED["fastvit_ma36.apple_dist_in1k"].top1 == 84.6
    assert "distilled" in PRETRAINED["fastvit_t8.apple_dist_in1k"].sources[0].url
    assert PRETRAINED["fastvit_mci0.apple_mclip"].sources[0].url.endswith("mobileclip_s0.pt")


def test_create_model_without_weights() -> None:
    m = fastvit.create_model("fastvit_t8", pretrained=False)  # raised TypeError before
    assert m.num_classes == 1000 and m.training
    m = fastvit.create_model("fastvit_mci0.apple_mclip2_dfndr2b", pretrained=False)
    assert m.num_classes == 512 and m.pretrained_cfg["crop_pct"] == 1.0
    assert m.pretrained_cfg["tag"] == "apple_mclip2_dfndr2b"
    with pytest.raises(fastvit.ConfigError, match=r"unknown pretrained tag 'fastvit_t8\.nope'"):
        fastvit.create_model("fastvit_t8.nope")
    with pytest.raises(fastvit.ConfigError, match="unknown model 'fastvit_x1'"):
        fastvit.create_model("fastvit_x1.apple_in1k", pretrained=True)


# ------------------------------------------------------------------ URL downloads


def test_official_unfused_url_download_new_head_and_cache(server, monkeypatch, t8, tmp_path):
    server.files["/fastvit_t8.pth.tar"] = (
        _torch_bytes({"state_dict": t8.state_dict()}),
        "application/octet-stream",
    )
    _use_server(monkeypatch, TAG, (Source(server.url("/fastvit_t8.pth.tar")),))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    m = fastvit.create_model(TAG, pretrained=True)
    assert torch.equal(_out(m), _out(t8)) and m.class_names[1].startswith("goldfish")
    cached = tmp_path / "home" / "checkpoints" / TAG / "fastvit_t8.pth.tar"
    assert cached.is_file()
    _no_stray_files(tmp_path / "home")
    m10 = fastvit.create_model(TAG, pretrained=True, num_classes=10)  # from the cache
    assert len(server.requests) == 1
    assert m10.num_classes == 10 and m10.head.out_features == 10 and m10.class_names is None
    sd, ref = m10.state_dict(), t8.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref if not k.startswith("head."))


def test_official_reparam_file_after_404(server, monkeypatch, t8):
    fused = convert_state_dict(fastvit.reparameterize(t8).state_dict(), to="official")
    server.files["/fastvit_t8_reparam.pth.tar"] = (_torch_bytes(fused), "application/x-tar")
    _use_server(
        monkeypatch,
        TAG,
        (
            Source(server.url("/fastvit_t8.pth.tar")),
            Source(server.url("/fastvit_t8_reparam.pth.tar"), form="fused"),
        ),
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    m = fastvit.create_model(TAG, pretrained=True)
    assert [p for p, _ in server.requests] == ["/fastvit_t8.pth.tar", "/fastvit_t8_reparam.pth.tar"]
    assert m.inference_mode and (_out(m) - _out(t8)).abs().max() <= 1e-5


def test_interrupted_download_resumes_with_range(server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    body = bytes(range(256)) * 4000
    server.files["/w.bin"] = (body, "application/octet-stream")
    server.interrupt.add("/w.bin")
    dest = tmp_path / "dl" / "w.bin"
    with pytest.raises(
        DownloadError,
        match=r"interrupted after 512000 of 1024000 bytes; run "
        "again to resume",
    ):
        download_url(server.url("/w.bin"), dest, progress=False)
    assert not dest.exists() and (tmp_path / "dl" / ".w.bin.partial").stat().st_size == 512000
    download_url(server.url("/w.bin"), dest, progress=False)
    assert dest.read_bytes() == body and server.requests[-1][1] == "bytes=512000-"
    _no_stray_files(tmp_path / "dl")


def test_wrong_hash_wrong_size_404_and_html_leave_nothing(server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.files["/w.bin"] = (b"\x80\x02weights" * 100, "application/octet-stream")
    server.files["/page"] = (b"<!DOCTYPE html><html>Access denied</html>", "text/html")
    server.files["/disguised"] = (b"\n <html><body>Error</body></html>", "application/zip")
    dest = tmp_path / "dl" / "w.bin"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_url(server.url("/w.bin"), dest, sha256="0" * 64, progress=False)
    with pytest.raises(DownloadError, match="has 900 bytes, expected 901"):
        download_url(server.url("/w.bin"), dest, size=901, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(server.url("/missing.pth"), dest, progress=False)
    with pytest.raises(DownloadError, match="HTML page"):
        download_url(server.url("/page"), dest, progress=False)
    with pytest.raises(DownloadError, match="HTML page"):
        download_url(server.url("/disguised"), dest, progress=False)
    assert not dest.exists()
    _no_stray_files(tmp_path / "dl")
    digest = hashlib.sha256(b"\x80\x02weights" * 100).hexdigest()
    good = download_url(server.url("/w.bin"), dest, size=900, progress=False, sha256=digest)
    assert file_sha256(good) == digest and good.read_bytes() == b"\x80\x02weights" * 100


def test_unreachable_names_tag_url_and_manual_path(tmp_path, monkeypatch, t8, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    s = _Server()
    url = s.url("/fastvit_t8.pth.tar")
    s.close()  # nothing listens there any more
    _use_server(monkeypatch, TAG, (Source(url),))
    manual = tmp_path / "home" / "checkpoints" / TAG / "fastvit_t8.pth.tar"
    with pytest.raises(DownloadError) as info:
        fastvit.create_model(TAG, pretrained=True)
    msg = str(info.value)
    assert "\n" not in msg and TAG in msg and url in msg and str(manual) in msg
    img = tmp_path / "cat.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 100, 50)).save(img)
    assert cli(["predict", "--model", TAG, str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and TAG in err[0] and str(manual) in err[0]
    # the manually downloaded file is then picked up, with no network
    manual.parent.mkdir(parents=True, exist_ok=True)
    torch.save(t8.state_dict(), manual)
    assert torch.equal(_out(fastvit.create_model(TAG, pretrained=True)), _out(t8))


def test_load_model_from_url_timm_layout_and_overlay_file(server, monkeypatch, t8, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.files["/ft/model.safetensors"] = (
        st_save({k: v.contiguous() for k, v in convert_state_dict(t8.state_dict()).items()}),
        "application/octet-stream",
    )
    m = fastvit.load_model(server.url("/ft/model.safetensors"))
    assert m.variant == "fastvit_t8" and torch.equal(_out(m), _out(t8))
    fastvit.load_model(server.url("/ft/model.safetensors"))  # cached by URL
    assert len(server.requests) == 1
    local = tmp_path / "mine.pth"
    torch.save(t8.state_dict(), local)
    m = fastvit.create_model(TAG, pretrained=True, pretrained_cfg_overlay=dict(file=local))
    assert torch.equal(_out(m), _out(t8)) and m.pretrained_cfg["tag"] == "apple_in1k"
    m = fastvit.create_model("fastvit_t8", checkpoint_path=local)
    assert torch.equal(_out(m), _out(t8))


# ------------------------------------------------------------------ MobileCLIP


@pytest.fixture(scope="module")
def mci0() -> nn.Module:
    torch.manual_seed(1)
    model = fastvit.models.create_model("fastvit_mci0")
    randomize_bn_and_scales(model, seed=2)
    return model.eval()


def test_mobileclip_official_and_open_clip_layouts(server, monkeypatch, mci0):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    sd = mci0.state_dict()
    official = {f"image_encoder.model.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    official["image_encoder.model.head.proj"] = sd["head.weight"].t().contiguous()
    official["text_encoder.transformer.0.weight"] = torch.randn(8, 8)
    official["logit_scale"] = torch.tensor(4.6)
    assert not sd["head.bias"].any()  # a CLIP projection has no bias
    server.files["/mobileclip_s0.pt"] = (_torch_bytes(official), "application/octet-stream")
    tag = "fastvit_mci0.apple_mclip"
    _use_server(monkeypatch, tag, (Source(server.url("/mobileclip_s0.pt"), "mobileclip"),))
    m = fastvit.create_model(tag, pretrained=True)
    assert m.num_classes == 512 and m.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)
    ref = _out(mci0)
    assert torch.equal(_out(m), ref)
    timm_sd = convert_state_dict(sd, to="timm")
    open_clip = {f"visual.trunk.{k}": v for k, v in timm_sd.items()}
    open_clip["text.token_embedding.weight"] = torch.randn(4, 8)
    server.files["/open_clip_model.safetensors"] = (st_save(open_clip), "application/x-binary")
    assert torch.equal(_out(fastvit.load_model(server.url("/open_clip_model.safetensors"))), ref)


# ------------------------------------------------------------------ Hub (offline cache)


def _populate_hub(tmp_path: Path, repo: str, files: dict[str, bytes]) -> None:
    """The Hub cache layout huggingface_hub reads in offline mode."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_hub_offline_cache_tag_hf_hub_predict_and_init(tmp_path, t8, capsys):
    _populate_hub(
        tmp_path,
        f"timm/{TAG}",
        {
            "model.safetensors": st_save(
                {k: v.contiguous() for k, v in convert_state_dict(t8.state_dict()).items()}
            )
        },
    )
    ref = _out(t8)
    assert torch.equal(_out(fastvit.create_model(TAG, pretrained=True)), ref)
    m = fastvit.load_model(f"hf-hub:timm/{TAG}")
    assert torch.equal(_out(m), ref) and len(m.class_names) == 1000
    assert not m.training and m.pretrained_cfg["hf_hub_id"] == f"timm/{TAG}"
    assert torch.equal(_out(load_init_model(TAG)), ref)  # fastvit train --init TAG
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 120, 240)).save(img)
    assert cli(["predict", "--model", TAG, str(img), "--json", "--top-k", "2"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    top = doc["predictions"][0]
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()
    assert len(top["top_k"]) == 2
    assert all(c["label"] == names[c["index"]] for c in top["top_k"]), top
    # not in the cache, offline: one line naming the repo and where a manual file goes
    with pytest.raises(
        DownloadError,
        match=r"offline mode: cannot get pretrained weights for "
        r"fastvit_t12.apple_in1k: tried https://hugging",
    ):
        fastvit.create_model("fastvit_t12.apple_in1k", pretrained=True)


def test_cli_list_pretrained(capsys) -> None:
    assert cli(["list", "--pretrained"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("fastvit_")]
    assert len(rows) == 21 and any("fastvit_mci4.apple_mclip2_dfndr2b" in r for r in rows)
    assert cli(["list"]) == 0
    assert (
        len([line for line in capsys.readouterr().out.splitlines() if line.startswith("fastvit_")])
        == 12
    )


def test_registry_module_is_pure_data() -> None:
    assert registry.get_pretrained("fastvit_mci3").tag == "fastvit_mci3.apple_mclip2_dfndr2b"
    assert registry.split_name("fastvit_t8") == ("fastvit_t8", None)


def test_hub_repo_with_open_clip_file_only(tmp_path, mci0):
    """apple/mobileclip_s0_timm-style repository: no model.safetensors, an open_clip file
    holding the whole CLIP model; offline, from the Hub cache."""
    timm_sd = convert_state_dict(mci0.state_dict(), to="timm")
    full = {f"visual.trunk.{k}": v for k, v in timm_sd.items()}
    full["logit_scale"] = torch.tensor(4.6)
    _populate_hub(
        tmp_path, "apple/mobileclip_s0_timm", {"open_clip_pytorch_model.bin": _torch_bytes(full)}
    )
    m = fastvit.create_model("fastvit_mci0.apple_mclip", pretrained=True)
    assert torch.equal(_out(m), _out(mci0)) and m.class_names is None


def test_default_tag_per_architecture_in_pretrained_cfg():
    """An architecture built without a tag names its own default tag (timm's behaviour); the
    MobileCLIP towers used to claim `apple_in1k` and a Hub repo that does not exist."""
    from fastvit.models import create_model as build

    for arch, tag in (
        ("fastvit_t8", "apple_in1k"),
        ("fastvit_mci0", "apple_mclip"),
        ("fastvit_mci3", "apple_mclip2_dfndr2b"),
    ):
        cfg = fastvit.create_model(arch).pretrained_cfg
        assert (
            cfg["tag"] == tag
            and cfg["hf_hub_id"] == fastvit.pretrained.get_pretrained(f"{arch}.{tag}").hf_hub_id
        )
        assert cfg["license"] == ("fastvit-license" if tag == "apple_in1k" else "apple-amlr")
    bare = build("fastvit_mci0").pretrained_cfg
    assert bare["tag"] is None and bare["hf_hub_id"] is None and bare["license"] is None
