"""The partitions, defined once: `dataset` (dynamic, one key per registered .h5ad) and `layer` (the
configured model's layers, read from the environment when the definitions load)."""

import dagster as dg

from sae_genomics_core.config import Environment
from sae_genomics_core.model.specs import n_layers_of

# One key per registered .h5ad (sanitised name); added by the incoming/ sensor or `sae-genomics register`.
dataset_partitions = dg.DynamicPartitionsDefinition(name="dataset")


def layer_partitions(n_layers: int) -> dg.StaticPartitionsDefinition:
    """The configured model's layers, 0..n_layers-1."""
    return dg.StaticPartitionsDefinition([str(layer) for layer in range(n_layers)])


def dataset_layer_partitions(n_layers: int) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"dataset": dataset_partitions, "layer": layer_partitions(n_layers)})


# what every dataset × layer asset is partitioned by
dataset_layer = dataset_layer_partitions(n_layers_of(Environment.read().model))
