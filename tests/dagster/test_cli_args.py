"""The CLI refuses bad `annotate` arguments up front, and prepares `ui`'s Dagster home, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_genomics_core.annotations.refresh import CLIENTS
from sae_genomics_core.config import Home
from sae_genomics_dagster.cli import annotate_usage_error, chosen_assets, main, ui_launch
from sae_genomics_dagster.definitions import build_definitions
from sae_genomics_dagster.instance import instance_yaml_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home that does not exist yet (so a refused command can be seen to create nothing)."""
    root = tmp_path / "home"
    monkeypatch.setenv("SAE_GENOMICS_HOME", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster"))  # restored after prepare_home sets it
    return root


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--mode", "file", "--only", "hpo"],
            "--mode file --only hpo needs the downloaded file: pass --file PATH",
        ),
        (
            ["--mode", "file", "--only", "hpo", "gencc", "--file", "x.txt"],
            "one database's download at a time",
        ),
        (["--mode", "file", "--file", "x.txt"], "pass --only DB --file PATH"),
        (["--mode", "file", "--only", "hpo", "--file", "missing.txt"], "--file missing.txt: no such file"),
        (["--mode", "snapshot", "--file", "x.txt"], "--file is read only with --mode file"),
        (["--only", "hpoo"], "unknown database(s) hpoo"),
    ],
)
def test_annotate_refuses_bad_arguments_before_running(
    fresh_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(["annotate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no stack trace
    assert expected in err
    assert not fresh_home.exists()  # no home, no warehouse, no run


def test_annotate_only_without_names_is_an_error(
    fresh_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["annotate", "--mode", "snapshot", "--only"])
    assert exited.value.code == 2
    assert "--only: expected at least one argument" in capsys.readouterr().err
    assert not fresh_home.exists()


def test_unknown_database_error_lists_every_accepted_name() -> None:
    message = annotate_usage_error("live", ["nope"], []) or ""
    known = message.split("known: ")[1].split(", ")
    assert sorted(known) == sorted([*CLIENTS, "hpo_ontology"])
    for name in known:  # every listed name is accepted
        assert annotate_usage_error("snapshot", [name], []) is None


def test_annotate_file_mode_accepts_one_database_and_its_file(tmp_path: Path) -> None:
    download = tmp_path / "hp.obo"
    download.write_text("format-version: 1.2\n")
    assert annotate_usage_error("file", ["hpo_ontology"], [str(download)]) is None


def test_ui_starts_dagster_in_a_prepared_dagster_home(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = fresh_home / "dagster" / "dagster.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("telemetry:\n  enabled: true\n")  # an older copy is replaced
    monkeypatch.chdir(REPO)  # where `make ui` runs: it holds the template dagster.yaml
    monkeypatch.setenv("SAE_GENOMICS_SNAPSHOTS", "external/snapshots")
    monkeypatch.setenv("SAE_GENOMICS_MODEL", "dir:models/tx")

    command, folder, env = ui_launch("127.0.0.1", 3000)

    dagster_home = Path(env["DAGSTER_HOME"])
    assert dagster_home == fresh_home / "dagster"
    assert (dagster_home / "dagster.yaml").read_bytes() == instance_yaml_template().read_bytes()
    # `dagster dev` warns that dagster.yaml "will not be used" when its working folder holds one and is
    # not DAGSTER_HOME (dagster/_cli/dev.py); started in DAGSTER_HOME it uses that copy and says nothing
    assert folder == dagster_home
    assert command[1:6] == ["-m", "sae_genomics_dagster.dev", "dev", "-m", "sae_genomics_dagster.definitions"]
    # what was relative to the caller's folder still points at the same place from DAGSTER_HOME
    assert env["SAE_GENOMICS_HOME"] == str(fresh_home)
    assert env["SAE_GENOMICS_SNAPSHOTS"] == str(REPO / "external" / "snapshots")
    assert env["SAE_GENOMICS_MODEL"] == f"dir:{REPO / 'models' / 'tx'}"


def test_materialize_assets_plus_adds_everything_downstream(home: Home) -> None:
    """The README's `materialize NAME --assets enrichment+`: enrichment and what reads it, nothing above."""
    defs = build_definitions(home)
    alone = {key.to_user_string() for keys in chosen_assets(defs, ["enrichment"]).values() for key in keys}
    chosen = chosen_assets(defs, ["enrichment+"])
    names = {key.to_user_string() for keys in chosen.values() for key in keys}
    assert alone == {"enrichment", "enrichment_baselines"}  # the group of that name
    assert alone | {"feature_pages"} <= names
    assert not names & {"sae_checkpoint", "feature_stats", "activations", "cells"}
    assert set(chosen) <= {"sae_pipeline", "atlas"}
    with pytest.raises(ValueError, match="unknown asset or group enrichmnt"):
        chosen_assets(defs, ["enrichmnt+"])


def test_annotate_from_downloaded_files_as_the_readme_shows(fresh_home: Path) -> None:
    """`annotate --mode file --only hpo --file …`, then the ontology the same way: real runs, tables filled."""
    import duckdb

    fixtures = REPO / "tests" / "fixtures"
    download = fixtures / "annotations" / "hpo" / "genes_to_phenotype.txt"
    assert main(["annotate", "--mode", "file", "--only", "hpo", "--file", str(download)]) == 0
    obo = fixtures / "ontology" / "tiny.obo"
    assert main(["annotate", "--mode", "file", "--only", "hpo_ontology", "--file", str(obo)]) == 0
    with duckdb.connect(str(fresh_home / "warehouse.duckdb"), read_only=True) as connection:
        databases = connection.execute("select distinct database from gene_annotations").fetchall()
        (n_terms,) = connection.execute("select count(*) from hpo_ontology").fetchone()
    assert databases == [("hpo",)] and n_terms == 9  # the one downloaded database; tiny.obo's terms
