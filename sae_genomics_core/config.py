"""Where sae-genomics keeps its state (one home directory, ``$SAE_GENOMICS_HOME``) and every setting it
takes from the environment, read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

HOME_ENV = "SAE_GENOMICS_HOME"
DEFAULT_HOME_DIRNAME = ".sae-genomics"
MODEL_ENV = "SAE_GENOMICS_MODEL"  # the model spec (dir:<path> names a folder)
DEVICE_ENV = "SAE_GENOMICS_DEVICE"  # where the model runs
SAE_DEVICE_ENV = "SAE_GENOMICS_SAE_DEVICE"  # where SAEs train and encode
ANNOTATION_MODE_ENV = "SAE_GENOMICS_ANNOTATION_MODE"  # default mode of annotation refreshes
SOURCES_ENV = "SAE_GENOMICS_SOURCES"  # another external/sources.yaml
SNAPSHOTS_ENV = "SAE_GENOMICS_SNAPSHOTS"  # another folder of database snapshots
ARTEFACTS_ENV = "SAE_GENOMICS_ARTEFACTS"  # the artefact root: a folder or any fsspec URL (s3://bucket/prefix)
ARTEFACT_CACHE_ENV = "SAE_GENOMICS_ARTEFACT_CACHE_GB"  # the local replica of a remote artefact root
PROFILE_ENV = "SAE_GENOMICS_PROFILE"  # local, cluster or kubernetes: where runs, steps and state live
POSTGRES_URL_ENV = "SAE_GENOMICS_POSTGRES_URL"  # cluster profiles: postgresql+psycopg2://user:pw@host:port/db
CELERY_BROKER_ENV = "SAE_GENOMICS_CELERY_BROKER"  # cluster profile: redis://host:port/0
CELERY_BACKEND_ENV = "SAE_GENOMICS_CELERY_BACKEND"  # cluster profile: where step results go (redis://…/1)
GPUS_ENV = "SAE_GENOMICS_GPUS"  # cluster profiles: GPUs in the cluster (the `gpu` pool's slots)
K8S_GPU_CONFIG_ENV = "SAE_GENOMICS_K8S_GPU_CONFIG"  # kubernetes: JSON for the GPU steps' dagster-k8s/config
LOGS_BUCKET_ENV = "SAE_GENOMICS_LOGS_BUCKET"  # cluster profiles: the bucket step logs go to
WAREHOUSE_ENV = "SAE_GENOMICS_WAREHOUSE"  # ducklake:postgres:<libpq settings>: the tables in DuckLake
LAKE_DATA_ENV = "SAE_GENOMICS_LAKE_DATA"  # where DuckLake keeps its Parquet files (s3://bucket/prefix/)
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL"  # a non-AWS S3 server (SeaweedFS, MinIO), as boto reads it
S3_REGION_ENV = "AWS_REGION"
PAGES_URL_ENV = "SAE_GENOMICS_PAGES_URL"  # where `sae-genomics pages` / `ui` serve the feature pages
DEFAULT_PAGES_URL = "http://127.0.0.1:3001"
INCOMING_ENV = "SAE_GENOMICS_INCOMING"  # another folder (or s3://bucket/prefix/) the sensor watches for .h5ad
PROFILES = ("local", "cluster", "kubernetes")
DEFAULT_MODEL = "tiny-random"
AUTO = "auto"


@dataclass(frozen=True, kw_only=True)
class Environment:
    """The settings sae-genomics reads from the environment (each with its default), in one place."""

    model: str = DEFAULT_MODEL
    device: str = AUTO
    sae_device: str = AUTO
    annotation_mode: str = "live"
    sources_file: Path | None = None
    snapshots_dir: Path | None = None
    artefacts_root: str | None = None  # None: the home's artefacts/ folder
    artefact_cache_gb: float = 50.0
    profile: str = "local"
    gpus: int = 1
    k8s_gpu_config: str | None = None  # JSON; None: one nvidia.com/gpu per GPU step
    # service URLs may hold passwords: kept out of repr (logs, tracebacks)
    postgres_url: str | None = field(default=None, repr=False)
    celery_broker: str | None = field(default=None, repr=False)
    logs_bucket: str | None = None
    warehouse: str | None = field(default=None, repr=False)  # None: the home's warehouse.duckdb
    lake_data: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    incoming: str | None = None  # None: the home's incoming/ folder
    pages_url: str = DEFAULT_PAGES_URL

    @classmethod
    def read(cls) -> Environment:
        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value).expanduser() if value else None

        return cls(
            model=os.environ.get(MODEL_ENV) or DEFAULT_MODEL,
            device=os.environ.get(DEVICE_ENV) or AUTO,
            sae_device=os.environ.get(SAE_DEVICE_ENV) or AUTO,
            annotation_mode=os.environ.get(ANNOTATION_MODE_ENV) or "live",
            sources_file=path(SOURCES_ENV),
            snapshots_dir=path(SNAPSHOTS_ENV),
            artefacts_root=os.environ.get(ARTEFACTS_ENV) or None,
            artefact_cache_gb=_number(ARTEFACT_CACHE_ENV, cls.artefact_cache_gb),
            profile=_choice(PROFILE_ENV, PROFILES),
            gpus=int(_number(GPUS_ENV, cls.gpus)),
            k8s_gpu_config=os.environ.get(K8S_GPU_CONFIG_ENV) or None,
            postgres_url=os.environ.get(POSTGRES_URL_ENV) or None,
            celery_broker=os.environ.get(CELERY_BROKER_ENV) or None,
            logs_bucket=os.environ.get(LOGS_BUCKET_ENV) or None,
            warehouse=os.environ.get(WAREHOUSE_ENV) or None,
            lake_data=os.environ.get(LAKE_DATA_ENV) or None,
            s3_endpoint=os.environ.get(S3_ENDPOINT_ENV) or None,
            s3_region=os.environ.get(S3_REGION_ENV) or cls.s3_region,
            incoming=os.environ.get(INCOMING_ENV) or None,
            pages_url=os.environ.get(PAGES_URL_ENV) or DEFAULT_PAGES_URL,
        )


def _number(name: str, default: float) -> float:
    from sae_genomics_core.errors import SettingsError

    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SettingsError(f"${name} is {text!r}", fix=f"set {name} to a positive number, or unset it")
    return value


def _choice(name: str, choices: tuple[str, ...]) -> str:
    from sae_genomics_core.errors import SettingsError

    value = os.environ.get(name) or choices[0]
    if value not in choices:
        raise SettingsError(f"${name} is {value!r}", fix=f"set {name} to one of {', '.join(choices)}")
    return value


def sae_device() -> str:
    """Where SAEs train and encode: $SAE_GENOMICS_SAE_DEVICE, or auto (CUDA when available)."""
    configured = Environment.read().sae_device
    if configured != AUTO:
        return configured
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def secret(name: str) -> str | None:
    """An API key from the environment variable `name` (None when unset); never logged or stored."""
    return os.environ.get(name) or None


@dataclass(frozen=True)
class Home:
    """The home directory and the fixed layout inside it.

    ``warehouse.duckdb`` holds the tables, ``artefacts/`` the big binary files (activations,
    checkpoints), ``incoming/`` is watched for new .h5ad files, ``registry/`` records registered
    datasets and ``dagster/`` is ``$DAGSTER_HOME`` so run history survives restarts.
    """

    root: Path

    @classmethod
    def from_env(cls) -> Home:
        configured = os.environ.get(HOME_ENV)
        root = Path(configured) if configured else Path.cwd() / DEFAULT_HOME_DIRNAME
        return cls(root.expanduser().resolve())

    @property
    def warehouse(self) -> Path:
        """The DuckDB file, or (with $SAE_GENOMICS_WAREHOUSE=ducklake:…) the lake's name as a path-like
        string the warehouse functions recognise."""
        configured = Environment.read().warehouse
        return Path(configured) if configured else self.root / "warehouse.duckdb"

    @property
    def artefacts(self) -> Path:
        return self.root / "artefacts"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> Home:
        for path in (self.root, self.artefacts, self.incoming, self.registry, self.dagster_home, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        return self
