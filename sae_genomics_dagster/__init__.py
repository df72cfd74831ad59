"""Dagster wiring for sae-genomics: partitions, resources, assets, sensors. The science is in sae_genomics_core."""
