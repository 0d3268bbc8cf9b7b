"""The architecture factory: dense features [B, N, d] of a chosen layer and multi-level maps."""

import pytest
import torch

from harness.models.archs import build_backbone


@pytest.mark.parametrize("arch", ["vit_tiny_test", "resnet_tiny_test"])
def test_tiny_dense_and_levels(arch):
    b = build_backbone(arch).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        d = b.dense(x)
        n = (64 // b.stride) * (96 // b.stride)
        assert d.shape == (2, n, b.dim)
        m = b.dense_map(x)
        assert m.shape == (2, b.dim, 64 // b.stride, 96 // b.stride)
        assert torch.allclose(m.flatten(2).transpose(1, 2), d)
        levels = b.levels(x)
        assert [x.shape[1] for x in levels] == list(b.level_channels)


def test_vit_dense_drops_class_token_and_applies_final_norm():
    b = build_backbone("vit_tiny_test").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = b.net.forward_features(x)  # [1, 1 + 16, d], normed
        d = b.dense(x)
        raw = b.dense(x, norm=False)
        mid = b.dense(x, layer=1)
    assert full.shape[1] == 17 and torch.allclose(d, full[:, 1:])
    assert not torch.allclose(raw, d) and torch.allclose(b.net.norm(raw), d, atol=1e-5)
    assert mid.shape == d.shape and not torch.allclose(mid, d)


def test_unknown_arch_suggests():
    with pytest.raises(ValueError, match="Did you mean 'resnet50'"):
        build_backbone("resnet05")


def test_no_network_when_building(monkeypatch):
    import socket

    def refuse(*a, **k):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for arch in ("vit_tiny_test", "resnet_tiny_test", "swin_tiny_patch4_window7"):
        build_backbone(arch)
