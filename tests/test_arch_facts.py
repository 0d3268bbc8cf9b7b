"""Architectures by timm name: facts read from the built model, blocks by the protocol's rule, the seed
aliases unchanged (their models and dense outputs equal what the table-based factory built before)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from harness.archnames import ALIAS_NAMES, unknown_arch
from harness.models.archs import ArchError, arch_facts, build_backbone, scale_blocks

GOLDEN = Path(__file__).parent / "golden" / "arch_outputs.json"


def _fingerprint(arch: str) -> dict:
    """The same fingerprint tests/golden/arch_outputs.json holds, made by the table-based factory of commit
    7fe6ec7 (harness/models/archs.py before architectures were read from the model): state-dict keys and
    shapes, and the dense, embedding, level and class-token outputs of seeded weights on a seeded input."""
    torch.manual_seed(0)
    b = build_backbone(arch).eval()
    sd = b.net.state_dict()
    keys = hashlib.sha256(json.dumps([[k, list(v.shape)] for k, v in sd.items()]).encode()).hexdigest()[:16]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in sd.items():
            if k.endswith("running_var"):  # a variance is positive
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif v.is_floating_point():
                bump = 1.0 if k.endswith(("norm.weight", "norm1.weight", "norm2.weight")) else 0.0
                v.copy_(torch.randn(v.shape, generator=g) * 0.02 + bump)
        x = torch.randn(2, 3, *((224, 224) if "swin" in arch else (64, 96)), generator=g)
        d = b.dense(x)
        _, e = b.dense_and_embedding(x)
        lv = b.levels(x)
        ct = b.class_tokens(x, 4, True)

    def stat(t):
        return [
            list(t.shape),
            float(t.double().mean()),
            float(t.double().std()),
            [float(v) for v in t.flatten()[:: max(1, t.numel() // 5)][:5]],
        ]

    return {
        "keys": keys,
        "dense": stat(d),
        "embedding": stat(e),
        "levels": [stat(m) for m in lv],
        "class_tokens": stat(ct),
    }


def _close(a, b, path="") -> list[str]:
    if isinstance(a, list) and a and isinstance(a[0], (list, float, int)) or isinstance(a, list) and not a:
        if len(a) != len(b):
            return [f"{path}: {a} vs {b}"]
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, dict):
        return [m for k in a for m in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, float):
        return [] if abs(a - b) <= 1e-5 + 1e-4 * abs(b) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


@pytest.mark.parametrize("arch", ALIAS_NAMES)
def test_seed_aliases_build_the_models_they_built_before(arch):
    golden = json.loads(GOLDEN.read_text())[arch]
    assert _close(_fingerprint(arch), golden) == []


def test_facts_are_read_from_the_model():
    s14 = arch_facts("vit_small_patch14_reg4_dinov2")
    assert (s14.family, s14.dim, s14.patch, s14.depth, s14.prefix_tokens, s14.reg_tokens) == ("vit", 384, 14, 12, 5, 4)
    assert s14.class_token and s14.positions.startswith("absolute (37x37")
    v3 = arch_facts("vit_small_patch16_dinov3_qkvb")
    assert (v3.patch, v3.prefix_tokens, v3.reg_tokens, v3.positions) == (16, 5, 4, "RoPE")
    nocls = arch_facts("vit_base_patch16_nocls")
    assert (nocls.prefix_tokens, nocls.class_token) == (0, False)
    large = arch_facts("vit_large_patch16_224")
    assert (large.depth, large.dim, large.level_indices) == (24, 1024, (7, 11, 15, 23))
    cnx = arch_facts("convnext_tiny")
    assert (cnx.family, cnx.level_channels, cnx.level_strides, cnx.dense) == (
        "cnn",
        (96, 192, 384, 768),
        (4, 8, 16, 32),
        True,
    )
    cifar = arch_facts("resnet18_cifar")
    assert cifar.level_strides == (1, 2, 4, 8) and not cifar.dense
    small = arch_facts("vit_tiny_test", depth=6)  # arch_kwargs change the facts
    assert small.depth == 6


def test_blocks_scale_with_depth_by_the_protocols_rule():
    assert scale_blocks((3, 5, 7, 11), 12) == (3, 5, 7, 11)
    assert scale_blocks((3, 5, 7, 11), 24) == (7, 11, 15, 23)  # BEiT's UperNet ViT-L out_indices
    assert scale_blocks((2, 5, 8, 11), 24) == (5, 11, 17, 23)  # ViTDet/DINOv2's four of 24 blocks
    assert scale_blocks((3, 5, 7, 11), 4) == (0, 1, 2, 3)  # the 4-block test ViT
    assert scale_blocks((0, 1, 2, 3), 12, written_for=4) == (2, 5, 8, 11)
    with pytest.raises(ArchError, match="collapse"):
        scale_blocks((3, 5, 7, 11), 2)


def test_names_checked_without_timm_and_suggested():
    assert unknown_arch("vit_tiny_patch16_224") is None  # any timm name
    assert unknown_arch("vit_small_patch14_reg4_dinov2") is None
    msg = unknown_arch("vit_tiny_patch16_244")
    assert "Did you mean 'vit_tiny_patch16_224'" in msg
    assert "pretrained tag" in unknown_arch("vit_small_patch14_dinov2.lvd142m")
    with pytest.raises(ArchError, match="Did you mean 'resnet50'"):
        build_backbone("resnet05")


def test_timm_vit_by_name_gives_dense_tokens_of_its_own_size():
    b = build_backbone("vit_tiny_patch16_224").eval()
    with torch.no_grad():
        d = b.dense(torch.randn(1, 3, 64, 96))
    assert d.shape == (1, 4 * 6, 192)


def test_a_patch_remainder_is_padded_by_the_rule_or_refused():
    b = build_backbone("vit_tiny_test", patch_size=14).eval()
    x = torch.randn(1, 3, 64, 64)  # 64 = 4 x 14 + 8
    with pytest.raises(ArchError, match="not a multiple of the vit_tiny_test's patch 14"):
        b.dense(x)
    b.remainder = "center"
    with torch.no_grad():
        centre = b.dense_map(x)
        assert centre.shape[-2:] == (5, 5)  # 70 px: 3 + 64 + 3
        assert torch.equal(b.fit(x)[..., 3:67, 3:67], x)
        b.remainder = "bottom_right"
        assert torch.equal(b.fit(x)[..., :64, :64], x) and b.fit(x).shape[-1] == 70
        assert not torch.allclose(b.dense_map(x), centre)


def test_alias_depths_are_the_built_models():
    from harness.archnames import ALIAS_DEPTHS

    assert set(ALIAS_DEPTHS) == set(ALIAS_NAMES)
    for arch, depth in ALIAS_DEPTHS.items():
        assert arch_facts(arch).depth == depth, arch


def test_architectures_the_harness_cannot_read_are_refused_by_name():
    with pytest.raises(ArchError, match="HybridEmbed, not a plain PatchEmbed"):
        arch_facts("vit_base_r50_s16_224")
    with pytest.raises(ArchError, match="hiera_tiny_224: the harness cannot read its features"):
        arch_facts("hiera_tiny_224")
    with pytest.raises(ArchError, match=r"arch_kwargs \{'num_heads': 5\} \(AssertionError: dim should be divisible"):
        arch_facts("vit_tiny_patch16_224", num_heads=5)
    with pytest.raises(ArchError, match="'vit_tiny_test' cannot be built with arch_kwargs"):
        arch_facts("vit_tiny_test", class_token=False)
    beit = arch_facts("beit_base_patch16_224")  # timm's fc_norm: the tokens get no final norm, and it says so
    assert not beit.token_norm and "no final norm on the tokens" in beit.summary()


def test_a_parameter_added_later_is_read_by_the_job_and_left_out_of_the_hash():
    """`vit_levels_depth` at the value that computes what earlier records hold: the cell's config keeps it (the
    job reads it: 4 for the mini protocols' blocks), only its hash leaves it out, so earlier records stay
    current; on a non-alias architecture it is hashed."""
    import hashlib
    import json

    from harness.plan import build_plan, config_hash, resolved_config
    from harness.registry import load_registry

    reg = load_registry()
    cell = next(c for c in build_plan(reg, "mini") if c.protocol == "semfpn_mini")
    params = cell.config["protocol"]["params"]
    assert params["vit_levels_depth"] == 4 and cell.config["protocol"]["unhashed"] == ["vit_levels_depth"]
    before = json.loads(json.dumps(cell.config))  # the config as records made before the parameter held it
    del before["protocol"]["unhashed"], before["protocol"]["params"]["vit_levels_depth"]
    assert cell.config_hash == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    other = resolved_config(reg, "semfpn_mini", "ade20k", "dinov2_vits14", 1)  # not an alias: hashed
    assert "unhashed" not in other["protocol"] and config_hash(other) != config_hash(
        {**other, "protocol": {**other["protocol"], "params": {**other["protocol"]["params"], "vit_levels_depth": 12}}}
    )
