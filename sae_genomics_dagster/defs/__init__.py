"""Dagster definitions by stage, found by `load_from_defs_folder`: each folder holds its stage's assets, checks, jobs, schedules and sensors."""
