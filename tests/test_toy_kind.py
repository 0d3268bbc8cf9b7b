"""Adding a protocol kind touches its params schema, its entry in harness/kinds.py, its job module and its
YAML only (issue 24; docs/architecture.md, "Adding a protocol kind"): planner, launcher, records, output
checks, importer and tables read the kind's entry. Here a toy kind is added that way, at run time, and
seen end to end."""

import shutil
from pathlib import Path

import pandas as pd
from pydantic import Field

from harness import kinds
from harness.cli import main
from harness.params import P
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]


class ToyParams(P):  # 1. the params schema (in harness/params.py for a real kind)
    images: int = Field(default=8, ge=1)


TOY = kinds.ProtocolKind(  # 2. its entry in harness/kinds.py
    job="tests.toy_job",
    params=ToyParams,
    splits=("train",),
    role=kinds.DENSE,
    metrics=(
        kinds.Metric(name="toy_score", label="Toy score", low=0.0, high=100.0, dense_table=True, aliases=("toy",)),
    ),
)


def test_a_toy_kind_added_in_its_four_places_reaches_the_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(kinds.PROTOCOL_KINDS, "toy", TOY)
    data = worlds.imagefolder(tmp_path / "imagenet", classes=2, per_class=4)
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 2, seed=2)
    bench = worlds.tiny_registry(tmp_path, data, ck)
    # 4. its YAML: a protocol file of the new kind, and a suite that runs it (3. the job: tests/toy_job.py)
    (bench / "protocols" / "toy.yaml").write_text(
        "name: toy\nkind: toy\ntitle: toy brightness\ndatasets: [imagenet]\nparams: {images: 4}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 1, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "toys.yaml").write_text(
        "name: toys\ntitle: toy suite\nmethods: [tinyvit]\ngrid:\n  - {protocol: toy, datasets: [imagenet]}\n"
    )
    results = tmp_path / "results"
    sdd = lambda *a: main(["--registry", str(bench), *a, "--results", str(results)])
    assert sdd("submit", "--suite", "toys", "--cluster", "inline") == 0
    assert sdd("collect", "--suite", "toys") == 0 and sdd("tables", "--suite", "toys") == 0
    dense = pd.read_csv(results / "toys" / "tables" / "dense.csv")
    final = dense.set_index("checkpoint").loc["final"]
    assert 0 < final["Toy score"] < 100 and final["epoch_toy"] == 2  # the kind's declared metric, as a column
    # the importer reads the kind's declared metric (and its alias), and its domain
    f = tmp_path / "toy.csv"
    f.write_text("method,epoch,dataset,toy\ntinyvit,1,imagenet,250\n")
    assert sdd("import", str(f), "--suite", "toys", "--replace") == 1
    assert "toy_score = 250.0 is outside its domain, a number in [0, 100]" in capsys.readouterr().err
    # and the kind's version is in every cell's identity: bumping it makes exactly its records stale
    import dataclasses

    monkeypatch.setitem(kinds.PROTOCOL_KINDS, "toy", dataclasses.replace(TOY, version=2))
    assert sdd("plan", "--suite", "toys") == 0
    out = capsys.readouterr().out
    assert "2 stale cell(s) will run again" in out and "code version changed" in out
    shutil.rmtree(results)
