"""Release files as researchers have them: DINOv2 ViT-S/14 (+reg4) and DINOv3 ViT-S/16 in the layouts their
hub code saves (tests/formats.py, key names and shapes from the upstream model code), loaded through timm's
own converters by the method files in benchmarks/methods; safetensors; a timm state dict with no rule; foreign
layouts refused with what to do."""

import shutil
import subprocess
import sys

import pytest
import timm
import torch

from harness.models.checkpoints import CheckpointError, load_backbone
from harness.registry import ROOT, load_registry
from tests import formats

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def _registry(tmp_path, monkeypatch, method: str, sd: dict, *, name: str | None = None, edit=None):
    """A copy of the real registry whose checkpoints are under tmp; `sd` saved as the method's release file."""
    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    monkeypatch.setenv("SDD_CKPT_ROOT", str(tmp_path / "ckpt"))
    spec = load_registry(bench).method(method)
    path = spec.checkpoint_file(spec.epochs()[0])
    if name:
        path = path.with_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    if edit:
        f = bench / "methods" / f"{method}.yaml"
        f.write_text(edit(f.read_text()))
    return load_registry(bench), path


def _timm_reference(name: str, sd: dict) -> torch.Tensor:
    """timm's model `name` loaded strictly through its module's checkpoint_filter_fn: the dense tokens."""
    import sys as _sys

    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    convert = _sys.modules[type(model).__module__].checkpoint_filter_fn
    model.load_state_dict(convert({k: v.clone() for k, v in sd.items()}, model), strict=True)
    with torch.no_grad():
        return model.forward_features(X)[:, model.num_prefix_tokens :]


@pytest.mark.parametrize(
    "method, arch, registers",
    [("dinov2_vits14", "vit_small_patch14_dinov2", 0), ("dinov2_vits14_reg4", "vit_small_patch14_reg4_dinov2", 4)],
)
def test_dinov2_release_file_loads_every_key_through_timms_converter(tmp_path, monkeypatch, method, arch, registers):
    sd = formats.dinov2_release(registers=registers)
    reg, _ = _registry(tmp_path, monkeypatch, method, sd)
    loaded = load_backbone(method, 1, registry=reg)
    net = loaded.backbone.net
    assert loaded.loaded_keys == len(loaded.backbone.required_keys())
    assert loaded.unexpected_keys == []  # mask_token dropped by the converter, nothing else left over
    with torch.no_grad():
        dense = loaded.backbone.dense(X)
    assert dense.shape == (2, 16 * 16, 384)  # 224 / 14 = 16: the prefix tokens dropped by count
    assert torch.equal(dense, _timm_reference(arch, sd))
    torch.testing.assert_close(net.blocks[5].attn.qkv.weight, sd["blocks.5.attn.qkv.weight"], rtol=0, atol=0)
    if registers:  # DINOv2 adds pos_embed[:, 0] to the class token only; the registers carry no position
        assert torch.equal(net.reg_token, sd["register_tokens"])
        assert torch.equal(net.cls_token, sd["cls_token"] + sd["pos_embed"][:, 0])
        assert torch.equal(net.pos_embed, sd["pos_embed"][:, 1:])
        assert loaded.backbone.info.prefix_tokens == 5
    else:
        assert torch.equal(net.pos_embed, sd["pos_embed"])


def test_dinov3_release_file_loads_into_the_qkvb_model(tmp_path, monkeypatch):
    sd = formats.dinov3_release()
    reg, _ = _registry(tmp_path, monkeypatch, "dinov3_vits16", sd)
    loaded = load_backbone("dinov3_vits16", 1, registry=reg)
    net = loaded.backbone.net
    assert loaded.backbone.info.positions == "RoPE" and loaded.backbone.info.prefix_tokens == 5
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())  # the NaN bias_mask never reached it
    assert torch.equal(net.reg_token, sd["storage_tokens"])
    q, _, v = sd["blocks.0.attn.qkv.bias"].chunk(3)
    assert torch.equal(net.blocks[0].attn.q_bias, q) and torch.equal(net.blocks[0].attn.v_bias, v)
    with torch.no_grad():
        dense = loaded.backbone.dense(X)
    assert dense.shape == (2, 14 * 14, 384)
    assert torch.equal(dense, _timm_reference("vit_small_patch16_dinov3_qkvb", sd))
    # DINOv3 masks the key bias to 0 (LinearKMaskedBias): a different K bias in the file changes nothing
    sd2 = {k: v.clone() for k, v in sd.items()}
    d = 384
    for k in [k for k in sd2 if k.endswith("attn.qkv.bias")]:
        sd2[k][d : 2 * d] += 1.0
    reg2, _ = _registry(tmp_path / "k", monkeypatch, "dinov3_vits16", sd2)
    with torch.no_grad():
        assert torch.equal(load_backbone("dinov3_vits16", 1, registry=reg2).backbone.dense(X), dense)


def test_dinov3_biases_the_model_cannot_hold_are_refused_not_dropped(tmp_path, monkeypatch):
    sd = formats.dinov3_release()
    reg, path = _registry(
        tmp_path,
        monkeypatch,
        "dinov3_vits16",
        sd,
        edit=lambda t: t.replace("arch: vit_small_patch16_dinov3_qkvb", "arch: vit_small_patch16_dinov3"),
    )
    with pytest.raises(
        CheckpointError,
        match=r"08c60483.pth: the file has non-zero attention biases .* Use the variant with q/v biases",
    ):
        load_backbone("dinov3_vits16", 1, registry=reg)
    zero = {k: (torch.zeros_like(v) if k.endswith("qkv.bias") else v) for k, v in sd.items()}  # as the B/L/H files
    reg, _ = _registry(
        tmp_path / "z",
        monkeypatch,
        "dinov3_vits16",
        zero,
        edit=lambda t: t.replace("arch: vit_small_patch16_dinov3_qkvb", "arch: vit_small_patch16_dinov3"),
    )
    loaded = load_backbone("dinov3_vits16", 1, registry=reg)
    with torch.no_grad():
        assert torch.equal(loaded.backbone.dense(X), _timm_reference("vit_small_patch16_dinov3", zero))


def test_safetensors_release_file_gives_the_same_tokens(tmp_path, monkeypatch):
    sd = formats.dinov2_release(registers=4)
    rename = lambda t: t.replace("file: dinov2_vits14_reg4_pretrain.pth", "file: dinov2_vits14_reg4.safetensors")  # noqa: E731
    reg, _ = _registry(
        tmp_path, monkeypatch, "dinov2_vits14_reg4", sd, name="dinov2_vits14_reg4.safetensors", edit=rename
    )
    loaded = load_backbone("dinov2_vits14_reg4", 1, registry=reg)
    with torch.no_grad():
        assert torch.equal(loaded.backbone.dense(X), _timm_reference("vit_small_patch14_reg4_dinov2", sd))


def test_a_timm_state_dict_loads_with_no_rule_and_a_wrong_arch_names_the_right_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    sd = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    method = "dinov2_vits14"
    timm_file = lambda t: (
        t.replace("arch: vit_small_patch14_dinov2", "arch: vit_tiny_patch16_224")
        .replace(  # noqa: E731
            "    convert: timm\n", "    {}\n"
        )
        .replace("  state_dict:\n    {}\n", "")
    )
    reg, _ = _registry(tmp_path, monkeypatch, method, sd, edit=timm_file)
    loaded = load_backbone(method, 1, registry=reg)
    assert loaded.backbone.info.dim == 192 and loaded.unexpected_keys == []
    small = lambda t: timm_file(t).replace("arch: vit_tiny_patch16_224", "arch: vit_small_patch16_224")  # noqa: E731
    reg, _ = _registry(tmp_path / "s", monkeypatch, method, sd, edit=small)
    with pytest.raises(
        CheckpointError, match=r"dim 192, depth 12, patch 16 \(timm names of that shape: vit_tiny_patch16_224"
    ):
        load_backbone(method, 1, registry=reg)


def test_release_layout_without_convert_and_hugging_face_keys_say_what_to_do(tmp_path, monkeypatch):
    sd = formats.dinov2_release(registers=4)
    no_convert = lambda t: t.replace("  state_dict:\n    convert: timm\n", "")  # noqa: E731
    reg, _ = _registry(tmp_path, monkeypatch, "dinov2_vits14_reg4", sd, edit=no_convert)
    with pytest.raises(CheckpointError, match="set `convert: timm`"):
        load_backbone("dinov2_vits14_reg4", 1, registry=reg)
    hf = {f"embeddings.patch_embeddings.projection.{k}": v for k, v in {"weight": torch.zeros(384, 3, 14, 14)}.items()}
    hf.update({f"encoder.layer.{i}.attention.attention.query.weight": torch.zeros(384, 384) for i in range(12)})
    reg, _ = _registry(tmp_path / "hf", monkeypatch, "dinov2_vits14", hf)
    with pytest.raises(CheckpointError, match="Hugging Face `transformers` keys"):
        load_backbone("dinov2_vits14", 1, registry=reg)


def test_validate_one_file_prints_what_matched_and_what_was_left_out(tmp_path, monkeypatch):
    sd = formats.dinov2_release(registers=4)
    sd["head.weight"] = torch.zeros(10, 384)  # something that is not backbone
    reg, path = _registry(tmp_path, monkeypatch, "dinov2_vits14_reg4", sd)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "--registry",
            str(reg.root),
            "validate",
            "--method",
            "dinov2_vits14_reg4",
            "--epoch",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ},
    )
    assert out.returncode == 0, out.stderr
    assert f"{path}: loads as method 'dinov2_vits14_reg4', epoch 1" in out.stdout
    assert "patch 14, 5 prefix token(s)" in out.stdout and "converted by `convert: timm`" in out.stdout
    assert "left out (in the file after the rule, not part of the backbone): head.weight" in out.stdout
    path.unlink()
    out = subprocess.run(
        [sys.executable, "-m", "harness", "--registry", str(reg.root), "validate", "--method", "dinov2_vits14_reg4"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "checkpoint not found" in out.stderr


def test_the_converter_never_fits_a_file_to_another_architecture(tmp_path, monkeypatch):
    """timm's converters resample a patch embedding and a position table to any model: a patch-14 file in a
    patch-16 ViT, a file with registers in a ViT without, or another img_size, are refused, never resampled."""
    s14 = formats.dinov2_release()
    to16 = lambda t: t.replace("arch: vit_small_patch14_dinov2", "arch: vit_small_patch16_224")  # noqa: E731
    reg, _ = _registry(tmp_path, monkeypatch, "dinov2_vits14", s14, edit=to16)
    with pytest.raises(CheckpointError, match=r"patch embedding is \(14, 14\) and vit_small_patch16_224's patch is 16"):
        load_backbone("dinov2_vits14", 1, registry=reg)
    reg4_into_plain = formats.dinov2_release(registers=4)
    reg, _ = _registry(tmp_path / "r", monkeypatch, "dinov2_vits14", reg4_into_plain)
    with pytest.raises(CheckpointError, match="cannot map this file|have no place in"):
        load_backbone("dinov2_vits14", 1, registry=reg)
    small = lambda t: t.replace(
        "arch: vit_small_patch14_dinov2", "arch: vit_small_patch14_dinov2\narch_kwargs: {img_size: 224}"
    )  # noqa: E731
    reg, _ = _registry(tmp_path / "i", monkeypatch, "dinov2_vits14", s14, edit=small)
    with pytest.raises(CheckpointError, match=r"position table is a 37x37 grid .* built for 16x16.*img_size: 518"):
        load_backbone("dinov2_vits14", 1, registry=reg)
