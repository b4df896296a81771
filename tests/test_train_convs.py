"""The training form's eager conv paths (kernel taps cut to the input's reach, channel-multiplier
convs as depthwise convs): same outputs and gradients as ``nn.Conv2d``, used in training steps
(autograd on) and nowhere a graph is captured, a hook watches the conv or autograd is off."""

from __future__ import annotations

import copy

import pytest
import torch

import fastvit.layers.conv_bn as conv_bn
from fastvit import create_model
from fastvit.layers import ConvBN
from fastvit.layers.inference.kernels import reach_cropped


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the fast convs ConvBN runs: split multiplier convs and cropped kernels."""
    calls = {"split": 0, "cropped": 0}
    split, crop = conv_bn.split_multiplier_conv, conv_bn.reach_cropped

    def counted_split(*args, **kwargs):
        calls["split"] += 1
        return split(*args, **kwargs)

    def counted_crop(*args, **kwargs):
        out = crop(*args, **kwargs)
        calls["cropped"] += out is not None
        return out

    monkeypatch.setattr(conv_bn, "split_multiplier_conv", counted_split)
    monkeypatch.setattr(conv_bn, "reach_cropped", counted_crop)
    return calls


def _plain(m: ConvBN) -> ConvBN:
    """A copy of ``m`` that always runs its ``nn.Conv2d``."""
    ref = copy.deepcopy(m)
    ref._eager_conv = lambda x: False
    return ref


@pytest.mark.parametrize(
    "cin, cout, k, stride, groups, hw, channels_last, split, cropped",
    [
        (8, 16, 7, 2, 8, (9, 7), False, 1, 0),  # patch embedding: multiplier conv
        (8, 16, 7, 2, 8, (6, 6), True, 1, 0),
        (8, 16, 7, 2, 8, (2, 2), True, 1, 1),  # both
        (8, 24, 3, 1, 8, (5, 4), True, 1, 0),  # multiplier 3
        (8, 8, 7, 1, 8, (1, 1), True, 0, 1),  # depthwise 7x7 on a 1x1 map: one tap
        (8, 8, 7, 1, 8, (2, 3), False, 0, 1),  # 3x5 of 7x7 taps reach
        (4, 6, 3, 1, 1, (1, 1), True, 0, 1),  # dense 3x3 on a 1x1 map
        (8, 8, 3, 1, 8, (4, 4), True, 0, 0),  # every tap reaches: nn.Conv2d itself
    ],
)
def test_fast_training_convs_equal_the_plain_conv(
    fast_calls: dict[str, int],
    cin: int,
    cout: int,
    k: int,
    stride: int,
    groups: int,
    hw: tuple[int, int],
    channels_last: bool,
    split: int,
    cropped: int,
) -> None:
    torch.manual_seed(0)
    m = ConvBN(cin, cout, k, stride, k // 2, groups).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = m.to(memory_format=fmt)
    ref = _plain(m)
    x = torch.randn(3, cin, *hw).contiguous(memory_format=fmt).requires_grad_()
    y, y_ref = m(x), ref(x)
    assert fast_calls == {"split": split, "cropped": cropped}
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.conv.weight, m.bn.weight), g)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.conv.weight, ref.bn.weight), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=fmt)  # the layout carries on
    torch.testing.assert_close(m.bn.running_mean, ref.bn.running_mean)


def test_reach_cropped_keeps_only_taps_that_touch_the_input() -> None:
    w = torch.arange(49.0).reshape(1, 1, 7, 7)
    assert reach_cropped(w, (3, 3), (4, 9)) is None  # 4 rows: offsets -3..3 all reach
    cut, pad = reach_cropped(w, (3, 3), (2, 1))
    assert pad == (1, 0) and cut.flatten().tolist() == [17.0, 24.0, 31.0]
    assert reach_cropped(w, (2, 2), (1, 1)) is None  # not "same" padding: left alone
    assert reach_cropped(torch.zeros(1, 1, 4, 4), (2, 2), (1, 1)) is None  # even kernel


def test_graphs_hooks_and_no_grad_see_the_plain_conv(fast_calls: dict[str, int]) -> None:
    m = ConvBN(8, 16, 7, 2, 3, 8).train()
    x = torch.randn(2, 8, 2, 2)
    with torch.no_grad():  # eval under no_grad: bitwise the fx graph's result (timm's tests)
        m.eval()
        assert torch.equal(m(x), torch.fx.symbolic_trace(m)(x))
        m.train()
    assert fast_calls == {"split": 0, "cropped": 0}
    graph = torch.fx.symbolic_trace(m)
    scripted = torch.jit.script(m)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    assert fast_calls == {"split": 0, "cropped": 0}
    for g in (graph, scripted, traced):
        torch.testing.assert_close(g(x), _plain(m)(x))
    assert fast_calls == {"split": 0, "cropped": 0}
    seen = []
    m.conv.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    m(x)
    assert seen == [(2, 16, 1, 1)] and fast_calls == {"split": 0, "cropped": 0}


def test_training_step_uses_the_fast_convs_at_32px(fast_calls: dict[str, int]) -> None:
    """The main job's setting (T8, 32 px, channels-last): the patch embeddings split and the
    last stages' 7x7 convs cropped; the loss and gradients equal the plain convs'."""
    torch.manual_seed(0)
    model = create_model("fastvit_t8", num_classes=10).train()
    model = model.to(memory_format=torch.channels_last)
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if isinstance(mod, ConvBN):
            mod._eager_conv = lambda x: False
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    losses, grads = [], []
    for m in (model, ref):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert fast_calls["split"] >= 6 and fast_calls["cropped"] >= 10, fast_calls
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    scale = grads[1].abs().max()
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * scale
