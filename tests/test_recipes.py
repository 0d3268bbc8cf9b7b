"""Recipes against their sources (issue 25): each protocol's recipe is read back from what its job builds on
the CPU (the mmseg config, the torchvision Mask R-CNN and its training plan, the parameters a job reads) and
compared with a transcription of the source it names (tests/golden/recipes/: values and source lines). A
difference not listed as a deviation in the protocol file fails, naming the field, both values and the line.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from harness.jobs.recipe import GOLDEN, cell_for, check, golden, markdown, view
from harness.kinds import LAUNCH_TEST, PROTOCOL_KINDS
from harness.registry import RegistryError, load_registry

ROOT = Path(__file__).resolve().parents[1]
REG = load_registry(ROOT / "benchmarks")
SOURCED = sorted(p.name for p in REG.protocols.values() if p.recipe is not None)


@pytest.mark.parametrize("protocol", SOURCED)
def test_recipe_matches_its_source(protocol):
    assert check(REG, protocol) == []


@pytest.mark.parametrize("protocol", ["maskrcnn", "maskrcnn_vitdet"])
def test_detectron2_config_matches_the_source(protocol, tmp_path):
    """The detectron2 backend's own config, read back, against the same transcription (its listed
    deviation: no DETR crop branch)."""
    pytest.importorskip("detectron2")
    assert check(REG, protocol, backend="detectron2") == []
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    f = bench / "protocols" / f"{protocol}.yaml"
    f.write_text(f.read_text().replace("score_thresh: 0.05", "score_thresh: 0.0"))
    (problem,) = check(load_registry(bench), protocol, backend="detectron2")
    assert problem.startswith("test.score_thresh: harness 0.0 vs source 0.05 (mask_rcnn")


def test_every_protocol_names_a_source_or_what_it_scales_down():
    """Every protocol of a suite other than the mini world's follows a source; miniatures name their protocol."""
    for spec in REG.protocols.values():
        if spec.kind == "probe":  # the launch tests' protocol: no recipe to follow
            continue
        assert spec.recipe is not None or spec.miniature_of, f"{spec.name}: names no source"
        if spec.recipe is not None:
            assert golden(spec) is not None, f"{spec.name}: no transcription of its source under {GOLDEN}"


def test_every_kind_with_a_published_protocol_has_a_recipe_test():
    kinds = {REG.protocol(p).kind for p in SOURCED}
    published = {k for k, kind in PROTOCOL_KINDS.items() if kind.role != LAUNCH_TEST}
    assert published <= kinds, f"kinds without a protocol that follows a source: {sorted(published - kinds)}"


def test_deviations_name_fields_of_the_recipe():
    """A deviation for a field neither the built recipe nor the source has excuses nothing (a typo would
    hide a real difference)."""
    for name in SOURCED:
        spec = REG.protocol(name)
        _, source = golden(spec)
        fields = set(view(cell_for(REG, name, source["method"]), REG)) | set(source["values"])
        for d in spec.recipe.deviations:
            if d.field in {"structure", "data.sampler"}:  # the sampler: no field on either side (the doc says it)
                continue
            assert any(f == d.field or f.startswith(d.field + ".") for f in fields), (
                f"{spec.source}: deviation for '{d.field}', a field of neither the recipe nor its source"
            )


def test_transcriptions_cite_a_line_for_every_value():
    for path in sorted(GOLDEN.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert {"repo", "commit", "path"} <= set(data["follows"]), path
        assert data["method"] in REG.methods, f"{path}: unknown method {data['method']}"
        for field, entry in data["values"].items():
            assert "value" in entry and entry.get("line") not in (None, ""), f"{path}: {field} cites no line"
            # the verbatim text of the cited line(s), checkable by tools/check_goldens.py; or a paper's sentence
            quote = entry.get("quote")
            assert (
                quote and all(isinstance(q, str) and q.strip() for q in ([quote] if isinstance(quote, str) else quote))
            ) or (isinstance(entry.get("paper"), str) and entry["paper"].strip()), (
                f"{path.name}: {field} quotes nothing (quote: the cited line's text, or paper: section and sentence)"
            )


# (protocol, parameter path in its file, a wrong value, the field and source line the failure must name)
MUTATIONS = [
    ("maskrcnn", ("drop_path",), 0.1, "backbone.drop_path", "mask_rcnn_vit_small_12_p16_1x_coco.py:22"),
    ("maskrcnn", ("step_epochs",), [9, 11], "schedule.step_epochs", "mask_rcnn_vit_small_12_p16_1x_coco.py:93"),
    ("maskrcnn_vitdet", ("warmup_iters",), 1000, "schedule.warmup_iters", "mask_rcnn_vitdet_b_100ep.py:33"),
    ("semfpn", ("optimizer", "lr"), 1.0e-4, "optimizer.lr", "semfpn_vit-s16_512x512_40k_ade20k.py:57"),
    ("upernet", ("decode_head", "channels"), 512, "decode_head.channels", "vit_small_512_ade20k_160k.py:39"),
    ("upernet_udi", ("schedule", "iters"), 80000, "schedule.iters", "schedule_160k.py:7"),
    ("knn", ("temperature",), 0.1, "temperature", "eval_knn.py:196"),
    ("davis", ("topk",), 7, "topk", "eval_video_segmentation.py:263"),
    ("metrics", ("dse", "global_clusters"), 20, "dse.global_clusters", "README.md:41"),
    ("linear_cls", ("optimizer", "lr"), 0.01, "optimizer.lr", "eval_linear.py:266"),
    ("linear", ("optimizer", "weight_decay"), 1.0e-3, "optimizer.weight_decay", "vitb_ade20k_linear_config.py:73"),
    ("linear", ("schedule", "warmup_iters"), 1000, "schedule.warmup_iters", "vitb_ade20k_linear_config.py:85"),
    ("linear_cifar100", ("optimizer", "weight_decay"), 0.0, "optimizer.weight_decay", "model.py:292"),
    ("lowshot_10pct", ("lambdas",), [0.1, 1.0], "lambdas", "eval_logistic_regression.py:214"),
]


def _set(d: dict, path: tuple, value):
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


@pytest.mark.parametrize("protocol,path,value,field,line", MUTATIONS, ids=[f"{m[0]}:{m[3]}" for m in MUTATIONS])
def test_a_changed_recipe_value_fails_naming_field_values_and_line(tmp_path, protocol, path, value, field, line):
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    f = bench / "protocols" / f"{protocol}.yaml"
    data = yaml.safe_load(f.read_text())
    if data.get("params") is None:
        data["params"] = {}
    _set(data["params"], path, value)
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        problems = check(load_registry(bench), protocol)
    except RegistryError as e:  # a value the kind's parameters refuse is caught even earlier
        pytest.fail(f"the mutation must load: {e}")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: harness ") and f"({line})" in problems[0], problems[0]
    assert f"harness {value!r} vs source " in problems[0], problems[0]


def test_a_code_change_that_drifts_from_the_source_fails(monkeypatch):
    """Not only the YAML: an edit of the job's builder (here the linear head) is caught the same way."""
    from harness.jobs import segmentation

    original = segmentation.HEADS["linear"]

    def drifted(*args, **kwargs):
        heads = original(*args, **kwargs)
        heads["decode_head"] = {**heads["decode_head"], "type": "FCNHead"}
        return heads

    monkeypatch.setitem(segmentation.HEADS, "linear", drifted)
    (problem,) = check(REG, "linear")
    assert problem == "decode_head.type: harness 'FCNHead' vs source 'BNHead' (vitb_ade20k_linear_config.py:102)"


def test_a_deviation_listed_for_a_field_excuses_exactly_that_field(tmp_path):
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    f = bench / "protocols" / "semfpn.yaml"
    data = yaml.safe_load(f.read_text())
    data["params"]["optimizer"]["lr"] = 1.0e-4
    data["params"]["drop_path"] = 0.2
    data["recipe"]["deviations"].append({"field": "optimizer.lr", "what": "x", "why": "y", "effect": "z"})
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    problems = check(load_registry(bench), "semfpn")
    assert [p.split(":")[0] for p in problems] == ["backbone.drop_path"]


def test_a_transcription_of_another_source_is_refused(tmp_path):
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    f = bench / "protocols" / "knn.yaml"
    data = yaml.safe_load(f.read_text())
    data["recipe"]["follows"]["commit"] = "0" * 40
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    (problem,) = check(load_registry(bench), "knn")
    assert "knn: the protocol file follows" in problem and "0000000" in problem


def test_protocols_doc_is_generated_from_the_files():
    spec = importlib.util.spec_from_file_location("protocol_docs", ROOT / "tools" / "protocol_docs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    doc = (ROOT / "docs" / "protocols.md").read_text()
    assert tool.rendered(doc, REG) == doc, (
        "docs/protocols.md is out of date: run .venv/bin/python tools/protocol_docs.py"
    )
    assert "as published" not in doc.lower()
    assert "**differs**" not in markdown(REG)


def test_ls_protocols_shows_every_source(capsys):
    from harness.cli import main

    assert main(["--registry", str(ROOT / "benchmarks"), "ls", "protocols"]) == 0
    out = capsys.readouterr().out
    for spec in REG.protocols.values():
        row = next(line for line in out.splitlines() if line.startswith(spec.name + " "))
        assert spec.source_line() in row
    assert "ISL-CV/udi@133c2cb:eval/eval_object_detection/configs/udi/mask_rcnn_vit_small_12_p16_1x_coco.py" in out
    assert "miniature of semfpn" in out


def test_miniature_of_must_name_a_protocol_of_the_same_kind(tmp_path):
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    f = bench / "protocols" / "knn_mini.yaml"
    f.write_text(f.read_text().replace("miniature_of: knn", "miniature_of: davis"))
    with pytest.raises(RegistryError, match=r"knn_mini.yaml:3: miniature_of: 'davis' is a davis protocol"):
        load_registry(bench)
