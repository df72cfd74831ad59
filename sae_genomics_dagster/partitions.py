"""Partition definitions shared by every asset."""

import dagster as dg

# One key per registered .h5ad (sanitised name); added by the incoming/ sensor or `sae-genomics register`.
dataset_partitions = dg.DynamicPartitionsDefinition(name="dataset")


def layer_partitions(n_layers: int) -> dg.StaticPartitionsDefinition:
    """The configured model's layers, 0..n_layers-1."""
    return dg.StaticPartitionsDefinition([str(layer) for layer in range(n_layers)])


def dataset_layer_partitions(n_layers: int) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"dataset": dataset_partitions, "layer": layer_partitions(n_layers)})
