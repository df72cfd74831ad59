#!/usr/bin/env bash
# Celery workers of the `cluster` profile on one machine: one worker per GPU on the `gpu` queue (each sees
# only its GPU), and one worker for the `default` queue (ingest, tables, enrichment, pages).
# Every machine needs the same code and environment: SAE_GENOMICS_PROFILE=cluster, SAE_GENOMICS_HOME,
# DAGSTER_HOME (with `sae-genomics init` run), SAE_GENOMICS_POSTGRES_URL, SAE_GENOMICS_CELERY_BROKER,
# SAE_GENOMICS_CELERY_BACKEND, SAE_GENOMICS_ARTEFACTS and the AWS_* variables of the object store.
# Usage: deploy/workers.sh [GPUS] [DEFAULT_CONCURRENCY]
set -euo pipefail
gpus=${1:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
default_concurrency=${2:-4}
config="$(dirname "$0")/celery.yaml"
for ((gpu = 0; gpu < gpus; gpu++)); do
  CUDA_VISIBLE_DEVICES=$gpu dagster-celery worker start -A dagster_celery.app -y "$config" \
    -q gpu -n "gpu$gpu@%h" -- --concurrency=1 &
done
dagster-celery worker start -A dagster_celery.app -y "$config" -q default -n "default@%h" \
  -- --concurrency="$default_concurrency" &
wait
