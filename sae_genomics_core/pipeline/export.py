"""A dataset's per-cell SAE feature activations written back into its .h5ad, for scanpy and cellxgene.

For each layer, every stored token is encoded with the layer's current SAE to its top-k latents, batch
by batch as for the feature tables (never a dense tokens × d_sae matrix), and reduced per cell to its
maximum over the cell's tokens (`how="max"`) or its mean over them (`"mean"`, non-firing tokens count
as 0). The result, a sparse cells × d_sae matrix with rows in the file's cell order (cells the model
skipped are all-zero rows), goes to obsm['X_sae_L<layer>'] of a copy of the source file, described in
uns['sae_genomics']['L<layer>'] (feature_ids, checkpoint_id, statistic, model_id, hook). The source is
copied as a file and the new elements added with anndata's element writer, so it is never read whole;
the copy replaces `out_path` in one rename.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sae_genomics_core.activations.store import ActivationStore
from sae_genomics_core.artefacts import ArtefactMissing, ArtefactStore
from sae_genomics_core.errors import InputError, SettingsError
from sae_genomics_core.features.settings import AssociationSettings

STATISTICS = ("max", "mean")
UNS_KEY = "sae_genomics"


def obsm_key(layer: int) -> str:
    return f"X_sae_L{layer}"


@dataclass(frozen=True)
class LayerExport:
    layer: int
    matrix: sp.csr_matrix  # cells × d_sae, float32
    metadata: dict[str, Any]  # what uns['sae_genomics']['L<layer>'] holds


@dataclass(frozen=True)
class Export:
    path: Path
    n_cells: int
    layers: list[LayerExport]


def export_activations(
    dataset: str,
    layers: Sequence[int] | None,
    store: ArtefactStore,
    source_h5ad: Path | str,
    out_path: Path | str,
    how: str = "max",
    settings: AssociationSettings | None = None,
) -> Export:
    """Write `source_h5ad` (the dataset's registered file) to `out_path` with each layer's per-cell
    activations (every layer with an SAE when `layers` is None or empty). Nothing is written when a
    layer has no SAE, the SAE does not match the activations, or the file is not the one extracted."""
    from sae_genomics_core.pipeline.features import open_partition

    settings = settings or AssociationSettings()
    source, out = Path(source_h5ad).expanduser().resolve(), Path(out_path).expanduser().resolve()
    _check_paths(how, source, out)
    activations = store.current_activations(dataset)
    chosen = _layers(dataset, layers, store)
    n_cells = _check_source(source, activations, dataset)
    exports = []
    for layer in chosen:
        activations, hook, loaded = open_partition(store, dataset, layer, settings.device)
        matrix = cell_activations(activations, layer, hook, loaded, how, settings)
        metadata = {
            "feature_ids": np.arange(matrix.shape[1], dtype=np.int64),
            "checkpoint_id": str(loaded.provenance["checkpoint_id"]),
            "statistic": how,
            "model_id": str(loaded.provenance["model_id"]),
            "hook": hook,
        }
        exports.append(LayerExport(layer, matrix, metadata))
    write_export(source, out, exports)
    return Export(out, n_cells, exports)


def cell_activations(
    activations: ActivationStore,
    layer: int,
    hook: str,
    loaded: Any,  # sae_genomics_core.sae.checkpoint.LoadedSae
    how: str = "max",
    settings: AssociationSettings | None = None,
) -> sp.csr_matrix:
    """Cells × d_sae (float32): each cell's maximum (or mean) activation of each feature over its tokens."""
    from sae_genomics_core.features.associate import _encode_shard, _reduce_per_cell

    settings = settings or AssociationSettings()
    sae = loaded.sae.to(settings.device)
    d_sae, n_cells = int(sae.cfg.d_sae), int(activations.manifest["n_cells_total"])
    cells, features, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for shard in activations.manifest["shards"]:
        if shard["n_tokens"] == 0:
            continue
        encoded = _encode_shard(activations, layer, hook, shard, sae, loaded.normalizer, settings)
        owners = np.asarray(encoded.tokens["cell_index"], dtype=np.int64)
        reduce = "amax" if how == "max" else "sum"
        cell, feature, value = _reduce_per_cell(
            owners[encoded.token_rows], encoded.features, encoded.activation, d_sae, reduce
        )
        if how == "mean":  # over all of the cell's tokens, firing or not
            shard_cells, tokens = np.unique(owners, return_counts=True)
            value = value / tokens[np.searchsorted(shard_cells, cell)]
        cells.append(cell)
        features.append(feature)
        values.append(value)
    # cells never span shards, so every (cell, feature) pair occurs once
    return sp.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(cells), np.concatenate(features))),
        shape=(n_cells, d_sae),
    )


def write_export(source: Path, out: Path, exports: Sequence[LayerExport]) -> None:
    """Copy `source` to `out` with the layers' obsm matrices and uns entries (others in uns['sae_genomics'],
    from an earlier export, are kept); written under a temporary name, then renamed."""
    import h5py
    from anndata.io import read_elem, write_elem

    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, temporary)
        with h5py.File(temporary, "r+") as file:
            obsm, uns = _group(file, "obsm"), _group(file, "uns")
            for export in exports:
                write_elem(obsm, obsm_key(export.layer), export.matrix)
            described = read_elem(uns[UNS_KEY]) if UNS_KEY in uns else {}
            described.update({f"L{export.layer}": export.metadata for export in exports})
            write_elem(uns, UNS_KEY, described)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def _group(file: Any, name: str) -> Any:
    from anndata.io import write_elem

    if name not in file:
        write_elem(file, name, {})
    return file[name]


def _check_paths(how: str, source: Path, out: Path) -> None:
    if how not in STATISTICS:
        raise SettingsError(
            f"unknown statistic {how!r}",
            fix=f"choose one of {', '.join(STATISTICS)} (per cell, over its tokens)",
        )
    if out.suffix != ".h5ad":
        raise InputError(f"{out} is not an .h5ad path", fix="name the output FILE.h5ad")
    if out == source:
        raise InputError(
            f"{out} is the dataset's registered file; overwriting it would change the dataset",
            fix="write the export to another path",
        )
    if not source.is_file():
        raise InputError(f"the dataset's file {source} does not exist", fix="register the dataset again")


def _layers(dataset: str, layers: Sequence[int] | None, store: ArtefactStore) -> list[int]:
    extracted = store.extracted_layers(dataset)
    if layers:
        missing = sorted(set(layers) - set(extracted))
        if missing:
            raise ArtefactMissing(
                f"{dataset} has no activations of layer(s) {', '.join(map(str, missing))}; it has "
                f"{', '.join(map(str, extracted))}",
                fix="choose extracted layers, or extract these (model resource `layers`) and train their SAEs",
            )
        return sorted(set(layers))
    with_sae = [layer for layer in extracted if store.current_checkpoint(dataset, layer) is not None]
    if not with_sae:
        raise ArtefactMissing(
            f"no SAE for {dataset} yet", fix=f"materialise `sae_checkpoint` for {dataset} first"
        )
    return with_sae


def _check_source(source: Path, activations: ActivationStore, dataset: str) -> int:
    """The file's number of cells; refused unless it is the file the activations were extracted from."""
    import anndata as ad

    from sae_genomics_core.data.h5ad import file_checksum

    manifest = activations.manifest
    try:
        backed = ad.read_h5ad(source, backed="r")
    except Exception as error:  # anndata raises many types for a foreign or truncated file
        raise InputError(
            f"{source} cannot be read as AnnData ({type(error).__name__}: {error})",
            fix="export from the dataset's registered .h5ad",
        ) from error
    n_cells = int(backed.n_obs)
    backed.file.close()
    expected = manifest.get("dataset_checksum")
    if n_cells != int(manifest["n_cells_total"]) or (expected and file_checksum(source) != expected):
        raise InputError(
            f"{source} is not the file {dataset}'s activations were extracted from ({n_cells} cells, "
            f"the activations {manifest['n_cells_total']}; or its content changed since): rows would not "
            "match its cells",
            fix=f"materialise `activations` and the SAEs of {dataset} again, or export from the file it was "
            "extracted from",
        )
    return n_cells
