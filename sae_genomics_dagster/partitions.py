"""Partition definitions shared by every asset."""

import dagster as dg

# One key per registered .h5ad (sanitised name); added by the incoming/ sensor or `sae-genomics register`.
dataset_partitions = dg.DynamicPartitionsDefinition(name="dataset")
