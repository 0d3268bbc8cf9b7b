"""End-to-end fine-tuning (issue 35): UDI's ImageNet fine-tuning (layer decay, a cosine per step), transfer
learning (DeiT: repeated augmentation, a cosine per epoch, lr x batch / 512) and low-shot fine-tuning (from the
method's projection layer), on generated data in the real layouts with tiny ViTs on the CPU; a cell stopped
mid-run resumes from its last epoch with the same schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

CPU = "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
PROTOCOLS = {
    "ft_tiny": "kind: finetune\ndatasets: [imagenet]\nparams: {epochs: 3, batch_size: 8, "
    "optimizer: {lr: 1.0e-3, layer_decay_rate: 0.75}, schedule: {kind: cosine_per_step, warmup_epochs: 1, "
    "warmup_lr: 0.0, min_lr: 1.0e-6}, augment: {input_size: 64}, eval_resize: 72, num_workers: 0}",
    "transfer_tiny": "kind: finetune\ndatasets: [cifar10]\nparams: {epochs: 3, batch_size: 16, "
    "optimizer: {lr: 2.0e-4, lr_scaling: batch/512}, schedule: {kind: cosine_per_epoch, warmup_epochs: 1, "
    "warmup_lr: 1.0e-6, min_lr: 1.0e-5}, augment: {input_size: 32, reprob: 0.1, repeated_aug: 3}, "
    "eval_resize: 32, num_workers: 0}",
    "lowshot_ft_tiny": "kind: finetune\ndatasets: [imagenet]\nparams: {train_split: train_few, epochs: 2, "
    "batch_size: 4, head: projection, optimizer: {lr: 1.0e-4}, schedule: {kind: cosine_per_epoch, "
    "warmup_epochs: 1, warmup_lr: 1.0e-6, min_lr: 1.0e-5}, augment: {input_size: 64}, eval_resize: 64, "
    "num_workers: 0}",
}
HIDDEN = 24  # the tiny projection head's first layer: 48 -> 24


@pytest.fixture
def world(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.imagenet(data / "imagenet-1k", classes=4, train=6, val=3)
    generate.imagenet_subsets(data / "imagenet-1k", {"few": 2})
    generate.cifar(data / "cifar10", hundred=False, train=4, val=2)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    path = worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    obj = torch.load(path, weights_only=True)  # DINO's teacher holds its projection head beside the backbone
    g = torch.Generator().manual_seed(3)
    obj["teacher"]["head.mlp.0.weight"] = torch.randn(HIDDEN, 48, generator=g)
    obj["teacher"]["head.mlp.0.bias"] = torch.randn(HIDDEN, generator=g)
    torch.save(obj, path)
    worlds.dino_checkpoint(ck, "nohead", "vit_tiny_test", 1, seed=2)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck)
    tiny = (bench / "methods" / "tinyvit.yaml").read_text()
    (bench / "methods" / "nohead.yaml").write_text(tiny.replace("tinyvit", "nohead"))
    (bench / "methods" / "tinyvit.yaml").write_text(tiny + "projection_head: head.mlp.0\n")
    (bench / "datasets" / "imagenet.yaml").write_text(
        f"name: imagenet\ntitle: mini\nkind: imagenet\nroot: {data / 'imagenet-1k'}\ntask: classification\n"
        "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n  val: {img_dir: val}\n"
        "  train_few: {img_dir: train, split_file: subsets/few.txt}\n"
    )
    cifar = bench / "datasets" / "cifar10.yaml"  # the generated CIFAR is not of the released size
    cifar.write_text(cifar.read_text().replace(", images: 50000", "").replace(", images: 10000", ""))
    for name, body in PROTOCOLS.items():
        (bench / "protocols" / f"{name}.yaml").write_text(f"name: {name}\ntitle: {name}\n{body}\n{CPU}")
    (bench / "suites" / "ft.yaml").write_text(
        "name: ft\ntitle: fine-tuning\nmethods: [tinyvit, nohead]\ngrid:\n"
        + "".join(
            f"  - protocol: {name}\n    datasets: [{'cifar10' if 'transfer' in name else 'imagenet'}]\n"
            "    epochs: [1]\n"
            for name in PROTOCOLS
        )
    )
    return load_registry(bench), obj


def cell(reg, protocol, method="tinyvit"):
    return next(c for c in build_plan(reg, "ft", protocols=[protocol], methods=[method]))


def test_imagenet_fine_tuning_layer_decay_and_the_best_epoch(world, tmp_path):
    reg, _ = world
    rec = execute(cell(reg, "ft_tiny"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 <= m["top1"] <= m["top1_best"] <= 100 and m["top1"] <= m["top5"]
    validated = [h["top1"] for h in rec["history"]]
    assert len(validated) == 3 and m["top1_best"] == max(validated)
    assert m["best_epoch"] == 1 + validated.index(max(validated))
    # BEiT's rule on the 4-block ViT: the embeddings at 0.75^5 of the lr, block i at 0.75^(4 - i), the head at 1
    lrs = sorted({round(g["lr"] / 1e-3, 6) for g in rec["param_groups"]})
    assert lrs == sorted({round(0.75**k, 6) for k in range(6)})
    head = [g for g in rec["param_groups"] if any(n.startswith("head.") for n in g["examples"])]
    assert head and all(g["lr"] == pytest.approx(1e-3) for g in head)
    assert rec["schedule"] == {"kind": "cosine_per_step", "steps_per_epoch": 3}  # 24 images / 8
    assert rec["train_images"] == 24 and rec["classes"] == 4 and rec["sampler"] == "DistributedSampler"
    assert "new linear layer (48 -> 4)" in rec["head"]
    # a requeue after the last epoch trains nothing and reports the same numbers
    again = execute(cell(reg, "ft_tiny"), tmp_path / "results")
    assert again["status"] == "ok" and again["resumed_from_epoch"] == 3 and again["metrics"]["top1"] == m["top1"]


def test_the_per_step_cosine_is_beits(world):
    """step_lr against BEiT's cosine_scheduler written out with numpy (linspace warm-up, then the cosine)."""
    from harness.jobs.finetune import step_lr
    from harness.params import FinetuneParams

    reg, _ = world
    p = FinetuneParams.model_validate(reg.protocol("ft_tiny").params)
    base, spe = 1e-3, 5
    warm = np.linspace(p.schedule.warmup_lr, base, p.schedule.warmup_epochs * spe)
    iters = np.arange(p.epochs * spe - len(warm))
    cos = p.schedule.min_lr + 0.5 * (base - p.schedule.min_lr) * (1 + np.cos(np.pi * iters / len(iters)))
    expected = np.concatenate([warm, cos])
    got = [step_lr(p, base, it, spe) for it in range(p.epochs * spe)]
    assert np.allclose(got, expected, rtol=1e-12, atol=0)


def test_transfer_repeated_augmentation_and_deits_epoch_schedule(world, tmp_path):
    from timm.scheduler import CosineLRScheduler

    reg, _ = world
    rec = execute(cell(reg, "transfer_tiny"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["sampler"] == "RepeatAugSampler" and rec["classes"] == 10
    assert rec["lr"] == pytest.approx(2e-4 * 16 / 512)  # DeiT's rule: lr x global batch / 512
    # DeiT's loop steps the scheduler with the epoch just trained: the lr after epoch e is the schedule's lr(e)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=rec["lr"])
    ref = CosineLRScheduler(opt, t_initial=3, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=1, cycle_limit=1)
    want = []
    for e in range(3):
        ref.step(e)
        want.append(opt.param_groups[0]["lr"])
    assert [h["lr"] for h in rec["history"]] == pytest.approx(want)
    # the warm-up's start, then timm's cosine at t = 1 of 3 (not shifted by the warm-up), which rises here: the
    # recipe's min_lr (1e-5) is above this lr, as it is above UDI's CIFAR-10 lr (5e-6 x 768 / 512)
    cosine = 1e-5 + 0.5 * (rec["lr"] - 1e-5) * (1 + math.cos(math.pi / 3))
    assert want[0] == pytest.approx(1e-6) and want[1] == pytest.approx(cosine) and want[2] > want[1]


def test_low_shot_fine_tuning_starts_from_the_methods_projection_layer(world, tmp_path, monkeypatch):
    from harness.jobs import finetune

    reg, obj = world
    built = {}
    real = finetune.build_head

    def spy(p, dim, classes, projection):
        built["head"] = head = real(p, dim, classes, projection)
        built["first"] = head[0].weight.detach().clone()
        return head

    monkeypatch.setattr(finetune, "build_head", spy)
    rec = execute(cell(reg, "lowshot_ft_tiny"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert torch.equal(built["first"], obj["teacher"]["head.mlp.0.weight"])
    assert rec["train_images"] == 8  # 2 listed images of each of the 4 classes
    assert f"(48 -> {HIDDEN}) + GELU" in rec["head"]
    assert rec["config"]["method"]["projection_head"] == "head.mlp.0"  # part of the cell's identity
    # a method that declares no projection head fails the cell, saying what to add
    bad = execute(cell(reg, "lowshot_ft_tiny", method="nohead"), tmp_path / "results")
    assert bad["status"] == "failed"
    assert "declares no projection head" in bad["error"] and "projection_head: head.mlp.0" in bad["error"]


def test_a_declared_projection_head_missing_from_the_file_is_named(world, tmp_path):
    reg, _ = world
    bench = tmp_path / "benchmarks"
    f = bench / "methods" / "nohead.yaml"
    f.write_text(f.read_text() + "projection_head: head.mlp.0\n")
    bad = execute(cell(load_registry(bench), "lowshot_ft_tiny", method="nohead"), tmp_path / "results")
    assert bad["status"] == "failed"
    assert "no projection layer 'head.mlp.0.weight'" in bad["error"] and "Fix projection_head" in bad["error"]


def test_a_cell_stopped_mid_run_resumes_from_its_last_epoch(world, tmp_path, monkeypatch):
    from harness.jobs import finetune

    reg, _ = world
    straight = execute(cell(reg, "transfer_tiny"), tmp_path / "straight")
    assert straight["status"] == "ok", straight.get("traceback")
    real = finetune._train_epoch
    calls = {"n": 0}

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("preempted")  # the job is killed in its second epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "_train_epoch", killed_in_epoch_two)
    first = execute(cell(reg, "transfer_tiny"), tmp_path / "results")
    assert first["status"] == "failed"
    monkeypatch.setattr(finetune, "_train_epoch", real)
    resumed = execute(cell(reg, "transfer_tiny"), tmp_path / "results")
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert resumed["resumed_from_epoch"] == 1 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # the same learning rates as the run that was never stopped (the schedule resumes where it was), and the same
    # numbers: the model, optimiser and sampler state are restored and every epoch's random streams are seeded
    assert [h["lr"] for h in resumed["history"]] == pytest.approx([h["lr"] for h in straight["history"]])
    assert resumed["metrics"] == straight["metrics"]
    assert math.isfinite(resumed["metrics"]["top1_best"])


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image():
    """RandAugment's increasing posterize keeps 0 bits at magnitude 10; Pillow 13 refuses that, older Pillow
    (the sources') returned all zeros: the harness's op gives the black image, never an exception."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from harness.jobs import finetune

    finetune._keep_posterize_total()
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.asarray(op(img)).max() == 0
    half = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5, hparams={"magnitude_std": 0})
    assert np.asarray(half(img)).max() == 192  # 2 bits kept: 200 -> 192


def test_a_split_not_of_its_released_size_fails_the_cell_naming_it(world, tmp_path):
    """A partial copy of ImageNet would give a fine-tuned accuracy that is not the protocol's: the dataset file's
    released size is checked."""
    reg, _ = world
    bench = tmp_path / "benchmarks"
    f = bench / "datasets" / "imagenet.yaml"
    f.write_text(f.read_text().replace("train: {img_dir: train}", "train: {img_dir: train, images: 1281167}"))
    bad = execute(cell(load_registry(bench), "ft_tiny"), tmp_path / "results")
    assert bad["status"] == "failed"
    assert "split 'train': 24 images" in bad["error"] and "the released split has 1281167" in bad["error"]


def test_the_plan_prices_fine_tuning_from_its_recipe():
    from pathlib import Path

    from harness.plan import recipe_price

    reg = load_registry(Path(__file__).resolve().parents[1] / "benchmarks")
    flowers = reg.protocol("transfer_flowers")
    want = (1000 * 2040 + 1000 * 6149 / 3) * flowers.resources.train_s_per_image / 3600
    assert recipe_price(flowers, reg.dataset("flowers102")) == pytest.approx(want, abs=1e-3)
    lowshot = reg.protocol("lowshot_ft_1pct")  # its labelled list, and val after every one of its 1000 epochs
    want = (1000 * 12811 + 1000 * 50000 / 3) * lowshot.resources.train_s_per_image / 3600
    assert recipe_price(lowshot, reg.dataset("imagenet")) == pytest.approx(want, abs=1e-3)
    # the mini world's copy of the data states no released sizes: its cells keep the protocol file's price
    assert recipe_price(lowshot, reg.dataset("imagenet", "mini")) is None
    assert recipe_price(reg.protocol("linear_cls"), reg.dataset("imagenet")) is None  # no per-image cost stated


def test_two_process_fine_tuning_keeps_the_global_batch_and_its_sampler(world, tmp_path):
    """Transfer learning as a 2-process gloo job on the local executor (real torch.distributed): DDP, the repeated-
    augmentation sampler split over the ranks, the recipe's global batch of 16 as 8 per process; rank 0 alone
    writes the record, and its learning rates are those of the one-process run."""
    import json

    from tests.test_slurm import sdd

    bench = tmp_path / "benchmarks"
    f = bench / "protocols" / "transfer_tiny.yaml"
    f.write_text(f.read_text().replace("resources: {gpus: 0, cpus: 1,", "resources: {gpus: 0, processes: 2, cpus: 2,"))
    results = tmp_path / "local"
    args = ("submit", "--suite", "ft", "--cluster", "local", "--results", str(results), "--protocol", "transfer_tiny")
    assert sdd(bench, *args, "--method", "tinyvit") == 0
    (rec_file,) = (results / "ft" / "runs" / "transfer_tiny" / "cifar10" / "tinyvit").iterdir()
    rec = json.loads(rec_file.read_text())
    assert rec["status"] == "ok", rec.get("error")
    assert rec["placement"]["world_size"] == 2 and rec["placement"]["backend"] == "gloo"
    assert rec["batch"]["per_device"] == 8 and rec["batch"]["global"] == 16 and rec["batch"]["accumulation"] == 1
    assert rec["sampler"] == "RepeatAugSampler" and rec["schedule"]["steps_per_epoch"] == 2  # 40 images / 16
    single = execute(cell(load_registry(bench), "transfer_tiny"), tmp_path / "one")
    assert [h["lr"] for h in rec["history"]] == pytest.approx([h["lr"] for h in single["history"]])


def test_a_non_finite_loss_fails_the_cell_at_its_step(world, tmp_path, monkeypatch):
    from harness.jobs import finetune

    reg, _ = world
    monkeypatch.setattr(finetune, "_criterion", lambda p: lambda logits, y: logits.sum() * float("nan"))
    bad = execute(cell(reg, "ft_tiny"), tmp_path / "results")
    assert bad["status"] == "failed"
    assert "the fine-tuning loss is not finite at epoch 1, step 1" in bad["error"]
