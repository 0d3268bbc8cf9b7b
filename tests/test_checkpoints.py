"""Every method's checkpoint, written in that method's own format, loads through the registry rule
with zero missing backbone keys and identical tensors; bad files fail with clear errors."""

import pickle
from pathlib import Path

import pytest
import torch

from harness.models.archs import build_backbone
from harness.models.checkpoints import CheckpointError, load_backbone, safe_load
from tests import formats

METHODS = sorted(formats.WRITERS)


def _write(registry, ckpt_root, method, epoch=None, **kw):
    spec = registry.method(method)
    epoch = epoch if epoch is not None else spec.epochs()[-1]
    fresh = build_backbone(spec.arch, **spec.arch_kwargs)
    with torch.no_grad():  # non-default values everywhere, so an untouched parameter cannot pass
        for p in fresh.net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sd = {k: v.clone() for k, v in fresh.net.state_dict().items()}
    path = formats.WRITERS[method](sd, ckpt_root / method, epoch, **kw)
    return spec, epoch, sd, path


# what each rule lets through beside the backbone (reported as unexpected keys)
EXTRAS = {
    "dino": "head.",
    "ibot": "head.",
    "mugs": "relation_blocks.",
    "mae": "decoder_",
    "mocov3": "head.",
    "esvit": "head",
    "simsiam": "fc.",
    "mec": "fc.",
    "resa": "fc.",
    "swav": "projection_head.",
    "vicreg": "module.projector.",
    "vicregl": "module.projector.",
    "barlowtwins": "module.projector.",
    "byol": "projetion.",
}


def test_every_registry_method_has_a_format_test(registry):
    real = {m for m in registry.methods if not m.startswith("mini_")}
    assert real == set(formats.WRITERS) and real


@pytest.mark.parametrize(
    "mini, real",
    [("mini_dino", "dino"), ("mini_mocov3", "mocov3"), ("mini_mae", "mae"), ("mini_directclr", "directclr")],
)
def test_mini_methods_use_the_real_methods_adapter_rules(registry, mini, real):
    m, r = registry.method(mini).checkpoint, registry.method(real).checkpoint
    assert m.state_dict == r.state_dict
    if real == "directclr":  # the released file is one final checkpoint without an epoch; the mini keeps each
        assert r.epoch_key is None and m.epoch_key == "epoch"
        return
    assert m.file == r.file and m.file_offset == r.file_offset
    assert (m.epoch_key, m.epoch_key_offset) == (r.epoch_key, r.epoch_key_offset)


@pytest.mark.parametrize("objective", ["dino", "mocov3", "mae", "directclr"])
def test_mini_pretraining_checkpoints_load_through_those_rules(tmp_path, monkeypatch, objective):
    """Checkpoints written by the tiny trainer load with the real method's rule, every key, right epoch."""
    from harness.mini import generate
    from harness.mini.pretrain import main as pretrain
    from harness.registry import load_registry

    data = generate.imagenet(tmp_path / "imagenet", classes=2, train=8, val=2)
    monkeypatch.setenv("SDD_MINI_ROOT", str(tmp_path / "mini"))
    out = tmp_path / "mini" / "checkpoints" / f"mini_{objective}"
    pretrain(
        [
            "--objective",
            objective,
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--quiet",
        ]
    )
    reg = load_registry()
    for epoch in (1, 2):
        loaded = load_backbone(f"mini_{objective}", epoch, registry=reg)
        assert loaded.stored_epoch == epoch and loaded.loaded_keys == len(loaded.backbone.required_keys())
    first = load_backbone(f"mini_{objective}", 1, registry=reg).backbone.net.state_dict()
    second = load_backbone(f"mini_{objective}", 2, registry=reg).backbone.net.state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # training changed the weights


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_own_format_loads_every_backbone_key_identically(registry, ckpt_root, method):
    spec, epoch, sd, path = _write(registry, ckpt_root, method)
    assert path.name == spec.checkpoint.file_name(epoch)
    loaded = load_backbone(method, epoch, registry=registry)
    got = loaded.backbone.net.state_dict()
    required = loaded.backbone.required_keys()
    assert loaded.loaded_keys == len(required) > 0
    for k in required:
        assert torch.equal(got[k], sd[k]), f"{method}: {k} differs from the written backbone"
    assert loaded.stored_epoch == (epoch if spec.checkpoint.epoch_key else None)  # W2, DirectCLR: no epoch stored
    extra = EXTRAS.get(method)
    if extra:  # the heads / projectors the rule lets through are reported, never loaded
        assert any(k.startswith(extra) for k in loaded.unexpected_keys), loaded.unexpected_keys
    assert not any(k in required for k in loaded.unexpected_keys)
    x = torch.randn(1, 3, 32, 32) if spec.arch == "resnet18_cifar" else torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = loaded.backbone.dense(x)
    assert feats.shape[-1] == loaded.backbone.dim and torch.isfinite(feats).all()


def test_directclr_training_checkpoint_loads_the_same_backbone(registry, ckpt_root):
    """main.py's checkpoint.pth (the DDP model under 'model') reads through the same rule as the released
    file: the online head and projector are dropped, every backbone key loads."""
    _, epoch, sd, _ = _write(registry, ckpt_root, "directclr", released=False)
    loaded = load_backbone("directclr", epoch, registry=registry)
    assert loaded.loaded_keys == len(loaded.backbone.required_keys())
    assert torch.equal(loaded.backbone.net.state_dict()["layer4.2.conv3.weight"], sd["layer4.2.conv3.weight"])


def test_a_cifar_encoder_is_refused_by_the_dense_protocols(registry, ckpt_root, tmp_path):
    """The W2 encoders' 3x3 stem puts their stage maps off the usual strides: a dense cell fails saying
    so instead of scoring misplaced features."""
    from harness.jobs import execute
    from harness.plan import Cell, config_hash, resolved_config

    _write(registry, ckpt_root, "w2_byol")
    cfg = resolved_config(registry, "linear", "ade20k", "w2_byol", 500)
    cell = Cell("x", "linear", "ade20k", "w2_byol", 500, config_hash(cfg), 0.0, cfg, str(registry.root))
    rec = execute(cell, tmp_path / "results", registry=registry)
    assert rec["status"] == "failed" and "resnet18_cifar" in rec["error"] and "linear_cls" in rec["error"]


@pytest.mark.slow
def test_swav_released_format_without_state_dict_key(registry, ckpt_root):
    _, epoch, sd, _ = _write(registry, ckpt_root, "swav", wrapped=False)
    loaded = load_backbone("swav", epoch, registry=registry)
    assert torch.equal(loaded.backbone.net.state_dict()["layer4.2.conv3.weight"], sd["layer4.2.conv3.weight"])
    assert loaded.stored_epoch is None


# ---- bad files ------------------------------------------------------------------------------------


class Evil:
    """Unpickling this would run `_touch(marker)`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A registry holding one tiny test method in DINO's format."""
    from harness.registry import load_registry

    root = tmp_path / "bench"
    (root / "methods").mkdir(parents=True)
    (root / "methods" / "tinydino.yaml").write_text(
        "name: tinydino\ntitle: tiny DINO\nfamily: test\narch: vit_tiny_test\n"
        "checkpoint:\n  dir: ${SDD_CKPT_ROOT}/tinydino\n  file: 'checkpoint{epoch:04d}.pth'\n"
        "  epochs: [1, 2, 3]\n  state_dict: {key: teacher, strip_prefixes: [module., backbone.]}\n"
    )
    ck = tmp_path / "ck"
    monkeypatch.setenv("SDD_CKPT_ROOT", str(ck))
    reg = load_registry(root)
    sd = build_backbone("vit_tiny_test").net.state_dict()
    return reg, ck / "tinydino", sd


def test_pickled_callable_is_refused_without_running(tiny, tmp_path):
    reg, d, sd = tiny
    marker = tmp_path / "pwned"
    d.mkdir(parents=True)
    torch.save(
        {"teacher": formats.prefixed("backbone.", sd), "epoch": 2, "evil": Evil(marker)}, d / "checkpoint0002.pth"
    )
    with pytest.raises(CheckpointError, match=r"refused to load .*checkpoint0002\.pth.*nothing from it was executed"):
        load_backbone("tinydino", 2, registry=reg)
    assert not marker.exists()
    # the same object through plain pickle does run: the test's payload is real
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def test_truncated_file_names_the_path(tiny):
    reg, d, sd = tiny
    path = formats.dino(sd, d, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint0001\.pth is corrupt or truncated"):
        load_backbone("tinydino", 1, registry=reg)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        safe_load(path)


def test_missing_file_names_the_path_and_the_numbering_found(tiny):
    reg, d, sd = tiny
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*tinydino/checkpoint0003\.pth.*does not exist"):
        load_backbone("tinydino", 3, registry=reg)
    d.mkdir(parents=True)
    torch.save({"teacher": formats.prefixed("backbone.", sd)}, d / "checkpoint0002.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint0003\.pth.*numbered 2 .*file_offset"):
        load_backbone("tinydino", 3, registry=reg)


def test_a_missing_backbone_key_is_an_error_not_a_partial_load(tiny):
    reg, d, sd = tiny
    partial = {k: v for k, v in sd.items() if k != "blocks.3.mlp.fc2.weight"}
    d.mkdir(parents=True)
    torch.save({"teacher": formats.prefixed("backbone.", partial), "epoch": 1}, d / "checkpoint0001.pth")
    with pytest.raises(CheckpointError, match=r"1 of \d+ backbone keys are missing.*blocks\.3\.mlp\.fc2\.weight"):
        load_backbone("tinydino", 1, registry=reg)


def test_wrong_prefix_rule_loads_nothing_and_says_so(tiny):
    reg, d, sd = tiny
    d.mkdir(parents=True)
    torch.save({"teacher": formats.prefixed("encoder.", sd), "epoch": 1}, d / "checkpoint0001.pth")
    with pytest.raises(
        CheckpointError, match=r"54 of 54 backbone keys are missing.*produced keys such as: encoder\.blocks"
    ):
        load_backbone("tinydino", 1, registry=reg)


def test_shape_mismatch_names_the_key(tiny):
    reg, d, sd = tiny
    bad = dict(sd, pos_embed=torch.zeros(1, 5, 48))
    d.mkdir(parents=True)
    torch.save({"teacher": formats.prefixed("backbone.", bad)}, d / "checkpoint0001.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch .*pos_embed \(1, 5, 48\)"):
        load_backbone("tinydino", 1, registry=reg)


def test_stored_epoch_is_read_and_checked(tiny):
    reg, d, sd = tiny
    formats.dino(sd, d, 2)
    assert load_backbone("tinydino", 2, registry=reg).stored_epoch == 2
    obj = safe_load(d / "checkpoint0002.pth")
    obj["epoch"] = 7
    torch.save(obj, d / "checkpoint0002.pth")
    with pytest.raises(
        CheckpointError, match=r"its 'epoch' field says 7 .* maps this file to epoch 2. .*checkpoint.file_offset: -5"
    ):
        load_backbone("tinydino", 2, registry=reg)


def test_numpy_and_namespace_bookkeeping_loads(tiny):
    import numpy as np

    reg, d, sd = tiny
    d.mkdir(parents=True)
    torch.save(
        {
            "teacher": formats.prefixed("backbone.", sd),
            "epoch": 1,
            "args": formats.args_ns(),
            "stats": np.arange(3.0),
            "best": np.float64(0.5),
        },
        d / "checkpoint0001.pth",
    )
    assert load_backbone("tinydino", 1, registry=reg).stored_epoch == 1


def test_unknown_epoch_and_unset_env_var(tiny, monkeypatch):
    from harness.registry import RegistryError

    reg, d, sd = tiny
    with pytest.raises(CheckpointError, match=r"epoch 9 is not among the epochs of method 'tinydino'"):
        load_backbone("tinydino", 9, registry=reg)
    monkeypatch.delenv("SDD_CKPT_ROOT")
    with pytest.raises(
        RegistryError, match=r"tinydino\.yaml: checkpoint\.dir: environment variable SDD_CKPT_ROOT is not set"
    ):
        load_backbone("tinydino", 1, registry=reg)
