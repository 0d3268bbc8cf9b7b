"""Registry files load into typed, frozen specs; every wrong file gives one clear message naming the
file, the line, the key, what was expected and the closest valid name."""

import shutil
from pathlib import Path

import pytest
import yaml

from harness.registry import ARCHS, RegistryError, expand_env, load_registry

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(tmp_path):
    dst = tmp_path / "benchmarks"
    shutil.copytree(ROOT, dst)
    return dst


def edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def errors_of(root) -> str:
    with pytest.raises(RegistryError) as e:
        load_registry(root)
    return str(e.value)


def test_real_registry_loads_with_every_kind(registry):
    for kind in ("methods", "datasets", "protocols", "suites"):  # every file loads, none is dropped
        assert set(getattr(registry, kind)) == {p.stem for p in (ROOT / kind).glob("*.yaml")}
    assert {"metrics", "linear", "upernet", "maskrcnn", "davis", "knn"} <= set(registry.protocols)
    assert registry.dataset("coco_stuff164k").num_classes == 171
    assert registry.dataset("voc12_aug").num_classes == 21
    ade = registry.dataset("ade20k")
    assert ade.num_classes == 150 and ade.reduce_zero_label
    assert registry.dataset("cityscapes").num_classes == 19
    assert registry.method("dino").epochs()[:3] == (10, 20, 30) and registry.method("densecl").epochs()[-1] == 200


def test_specs_are_frozen(registry):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        registry.method("dino").arch = "resnet50"


def test_registry_arch_names_match_the_model_factory():
    from harness.models.archs import ALIASES

    assert set(ARCHS) == set(ALIASES)


def test_timm_names_read_from_source_are_timm_list_models():
    import timm

    from harness.archnames import timm_names

    assert timm_names() == set(timm.list_models())


def test_unknown_key_names_file_line_and_suggests(bench):
    edit(bench / "methods" / "dino.yaml", "strip_prefixes:", "strip_prefix:")
    msg = errors_of(bench)
    line = next(
        i for i, x in enumerate((bench / "methods" / "dino.yaml").read_text().splitlines(), 1) if "strip_prefix:" in x
    )
    assert f"methods/dino.yaml:{line}: checkpoint.state_dict.strip_prefix: unknown key 'strip_prefix'" in msg
    assert "Did you mean 'strip_prefixes'?" in msg and "expected one of:" in msg


def test_wrong_type(bench):
    edit(bench / "protocols" / "linear.yaml", "gpus: 1,", "gpus: many,")
    msg = errors_of(bench)
    assert "protocols/linear.yaml:" in msg and "resources.gpus" in msg and "valid integer" in msg


def test_unknown_architecture_suggests(bench):
    edit(bench / "methods" / "mae.yaml", "arch: vit_small_patch16", "arch: vit_smal_patch16")
    msg = errors_of(bench)
    assert "methods/mae.yaml:6: arch: unknown architecture 'vit_smal_patch16': neither one of the aliases" in msg
    assert "Did you mean 'vit_small_patch16'" in msg and "sdd ls archs" in msg


@pytest.mark.parametrize(
    "epochs, expect",
    [
        ("{start: 100, stop: 10, step: 10}", "stop (10) is smaller than start (100)"),
        ("{start: 10, stop: 100, step: 0}", "greater than or equal to 1"),
        ("[30, 20, 10]", "strictly increasing"),
        ("[10, ten]", "item 1: 'ten'"),
        ("[]", "no epochs"),
        ("lots", "expected a list of epochs"),
    ],
)
def test_bad_epochs(bench, epochs, expect):
    edit(bench / "methods" / "dino.yaml", "epochs: {start: 10, stop: 800, step: 10}", f"epochs: {epochs}")
    msg = errors_of(bench)
    assert "methods/dino.yaml:10: checkpoint.epochs" in msg and expect in msg


def test_template_must_use_epoch(bench):
    edit(bench / "methods" / "dino.yaml", "file: 'checkpoint{epoch:04d}.pth'", "file: 'checkpoint{ep:04d}.pth'")
    assert "must contain the placeholder {epoch}" in errors_of(bench)


def test_missing_required_key(bench):
    edit(bench / "datasets" / "ade20k.yaml", "task: semantic_segmentation\n", "")
    msg = errors_of(bench)
    assert "datasets/ade20k.yaml: task: required key is missing" in msg


def test_suite_with_misspelled_method_and_dataset(bench):
    edit(bench / "suites" / "sdd.yaml", "methods: [dino,", "methods: [dnio,")
    edit(bench / "suites" / "sdd.yaml", "[coco_stuff164k, voc12_aug", "[coco_stuf164k, voc12_aug")
    msg = errors_of(bench)
    assert "suites/sdd.yaml:5: methods.0: unknown method 'dnio'" in msg and "Did you mean 'dino'?" in msg
    assert "grid.1.datasets.0: unknown dataset 'coco_stuf164k'" in msg and "Did you mean 'coco_stuff164k'?" in msg


def test_protocol_refuses_foreign_dataset(bench):
    edit(bench / "suites" / "udi.yaml", "datasets: [davis2017]", "datasets: [ade20k]")
    assert "protocol 'davis' does not accept dataset 'ade20k'" in errors_of(bench)


def test_name_must_match_file_and_yaml_must_parse(bench):
    edit(bench / "methods" / "ibot.yaml", "name: ibot", "name: ibot2")
    assert "methods/ibot.yaml:3: name: 'ibot2' does not match the file name" in errors_of(bench)
    edit(bench / "methods" / "ibot.yaml", "name: ibot2", "name: [ibot")
    assert "methods/ibot.yaml:" in errors_of(bench) and "not valid YAML" in errors_of(bench)


def test_all_errors_reported_together(bench):
    edit(bench / "methods" / "dino.yaml", "family: self-distillation", "family: distillation")
    edit(bench / "methods" / "mae.yaml", "title: MAE", "titel: MAE")
    msg = errors_of(bench)
    assert "dino.yaml" in msg and "mae.yaml" in msg and "Did you mean 'title'?" in msg


def test_env_var_expansion(monkeypatch):
    monkeypatch.setenv("SDD_X", "/data/x")
    assert expand_env("${SDD_X}/a") == "/data/x/a"
    monkeypatch.delenv("SDD_X")
    assert expand_env("${SDD_X:-data}/a") == "data/a"
    with pytest.raises(RegistryError, match=r"f\.yaml: root: environment variable SDD_X is not set.*export SDD_X="):
        expand_env("${SDD_X}/a", source="f.yaml", key="root")


def test_unknown_name_lookup_suggests(registry):
    with pytest.raises(RegistryError, match=r"unknown method 'mocov2'\. Did you mean 'mocov3'\?"):
        registry.method("mocov2")


def test_method_files_state_their_epochs_consistently(registry):
    """Each registry method file resolves its template for every epoch it lists."""
    for m in registry.methods.values():
        names = {m.checkpoint.file_name(e) for e in m.epochs()}
        assert len(names) == len(m.epochs()), m.name
        raw = yaml.safe_load(Path(m.source).read_text())
        assert raw["name"] == m.name
