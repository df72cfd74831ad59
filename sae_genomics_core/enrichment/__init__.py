"""Enrichment of SAE features against annotation databases, with baselines and calibration."""
