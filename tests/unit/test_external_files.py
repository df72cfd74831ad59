"""external/sources.yaml and the snapshots are found without the checkout: the wheel ships them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sae_genomics_core import external
from sae_genomics_core.config import SNAPSHOTS_ENV, SOURCES_ENV

REPO = Path(__file__).resolve().parents[2]
PACKAGED = "sae_genomics_core/_external"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # without hatchling in the venv pip builds in an isolated environment, from the configured index
    # as `make install` does
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(out), str(REPO)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("sae_genomics-*.whl")
    return path


def test_the_wheel_ships_sources_and_snapshots(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    snapshots = {
        f"{PACKAGED}/{path.relative_to(REPO / 'external').as_posix()}"
        for path in (REPO / "external" / "snapshots").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert f"{PACKAGED}/sources.yaml" in names
    assert snapshots and snapshots <= names, sorted(snapshots - names)[:5]


def test_an_installed_wheel_reads_its_own_copy(wheel: Path, tmp_path: Path) -> None:
    """Unpacked away from the checkout, with the environment unset: every resolver finds the packaged copy."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = (
        "import json, sae_genomics_core as core\n"
        "from sae_genomics_core.annotations import base\n"
        "from sae_genomics_core.model import specs\n"
        "print(json.dumps({'package': core.__file__, 'base_sources': str(base.sources_file()),\n"
        "    'snapshots': str(base.snapshots_dir()), 'specs_sources': str(specs.sources_file()),\n"
        "    'n_databases': len(base.load_sources()), 'n_layers': specs.n_layers_of('tahoe-x1-70m')}))\n"
    )
    # the packaged copy comes first on the path, before the checkout of the editable install
    environment = {k: v for k, v in os.environ.items() if k not in (SOURCES_ENV, SNAPSHOTS_ENV)}
    environment["PYTHONPATH"] = str(site)
    ran = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout)
    packaged = site / PACKAGED
    assert Path(found["package"]).parent == site / "sae_genomics_core"
    assert found["base_sources"] == found["specs_sources"] == str(packaged / "sources.yaml")
    assert found["snapshots"] == str(packaged / "snapshots")
    assert found["n_databases"] > 0 and found["n_layers"] > 0


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's setting, else the packaged copy, else the checkout's external/."""
    packaged, checkout = tmp_path / "packaged", tmp_path / "checkout"
    (packaged / "snapshots").mkdir(parents=True)
    (packaged / "sources.yaml").write_text("databases: {}\n")
    monkeypatch.setattr(external, "PACKAGED_DIR", packaged)
    monkeypatch.setattr(external, "CHECKOUT_DIR", checkout)
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "mine.yaml"))
    monkeypatch.setenv(SNAPSHOTS_ENV, str(tmp_path / "mine"))
    assert external.sources_file() == tmp_path / "mine.yaml"
    assert external.snapshots_dir() == tmp_path / "mine"

    monkeypatch.delenv(SOURCES_ENV)
    monkeypatch.delenv(SNAPSHOTS_ENV)
    assert external.sources_file() == packaged / "sources.yaml"
    assert external.snapshots_dir() == packaged / "snapshots"

    monkeypatch.setattr(external, "PACKAGED_DIR", tmp_path / "no-wheel")
    assert external.sources_file() == checkout / "sources.yaml"
    assert external.snapshots_dir() == checkout / "snapshots"


def test_a_source_tree_reads_the_checkout() -> None:
    assert external.CHECKOUT_DIR == REPO / "external"
    assert (external.CHECKOUT_DIR / "sources.yaml").exists()
