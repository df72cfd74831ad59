"""`sae-genomics doctor`: are the services of the configured profile there, and what is missing?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sae_genomics_core.artefacts import artefact_store
from sae_genomics_core.config import CELERY_BROKER_ENV, POSTGRES_URL_ENV, Environment, Home
from sae_genomics_core.errors import SaeGenomicsError

WORKER_QUEUES = ("gpu", "default")  # the Celery queues the cluster profile sends steps to


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def diagnose(home: Home, environment: Environment | None = None) -> list[Finding]:
    """Every check of the profile, each run even when an earlier one failed."""
    environment = environment or Environment.read()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("home", lambda: _home(home)),
        ("artefacts", lambda: _artefacts(home)),
        ("accelerator", _accelerator),
    ]
    if environment.profile != "local":
        checks += [
            ("postgres", lambda: _postgres(environment)),
            ("object storage", lambda: _remote_artefacts(environment)),
        ]
    if environment.profile == "cluster":
        checks += [("celery workers", lambda: _celery_workers(environment))]
    return [_run(name, check) for name, check in checks]


def _run(name: str, check: Callable[[], str]) -> Finding:
    try:
        return Finding(name, True, check())
    except _Missing as missing:
        return Finding(name, False, str(missing), missing.fix)
    except Exception as error:  # a failed check is a finding, never a crash of the doctor
        return Finding(
            name, False, f"{type(error).__name__}: {error}", "see the error; the README's Scale-out section"
        )


class _Missing(SaeGenomicsError):
    """A service the profile needs is not there; `fix` says what to do."""


def _home(home: Home) -> str:
    home.ensure()
    probe = home.root / ".doctor"
    probe.write_text("ok")
    probe.unlink()
    return f"{home.root} is writable"


def _artefacts(home: Home) -> str:
    store = artefact_store(home)
    return f"{store.root}" + (f" (local replica {store.replica})" if store.remote else "")


def _accelerator() -> str:
    import torch

    count = torch.cuda.device_count()
    return f"{count} CUDA device(s)" if count else "no CUDA device: models and SAEs run on the CPU"


def _postgres(environment: Environment) -> str:
    if not environment.postgres_url:
        raise _Missing(
            f"${POSTGRES_URL_ENV} is not set",
            f"set {POSTGRES_URL_ENV}=postgresql+psycopg2://user:pw@host:port/db",
        )
    import sqlalchemy

    engine = sqlalchemy.create_engine(environment.postgres_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            version = connection.execute(sqlalchemy.text("show server_version")).scalar()
    except sqlalchemy.exc.OperationalError as error:
        raise _Missing(
            f"cannot connect: {str(error).splitlines()[0]}", "start PostgreSQL or correct the URL"
        ) from error
    finally:
        engine.dispose()
    return f"PostgreSQL {version}"


def _remote_artefacts(environment: Environment) -> str:
    if not environment.artefacts_root or "://" not in environment.artefacts_root:
        raise _Missing(
            "artefacts are on this machine's disk: workers on other machines cannot read them",
            "set SAE_GENOMICS_ARTEFACTS=s3://bucket/prefix (and the AWS_* variables of the store)",
        )
    from upath import UPath

    root = UPath(environment.artefacts_root)
    bucket = root.path.split("/")[0]
    if not root.fs.exists(bucket):  # an unreachable store raises here
        raise _Missing(f"{root.protocol}://{bucket} does not exist", f"create the bucket {bucket}")
    return f"{root} reachable"


def _celery_workers(environment: Environment) -> str:
    if not environment.celery_broker:
        raise _Missing(f"${CELERY_BROKER_ENV} is not set", f"set {CELERY_BROKER_ENV}=redis://host:port/0")
    from celery import Celery

    app = Celery(broker=environment.celery_broker)
    replies = app.control.inspect(timeout=3).active_queues() or {}
    queues = {queue["name"] for listened in replies.values() for queue in listened}
    missing = [queue for queue in WORKER_QUEUES if queue not in queues]
    if missing:
        raise _Missing(
            f"no worker listens on {', '.join(missing)} ({len(replies)} worker(s) answered)",
            "start the workers: deploy/workers.sh on each machine",
        )
    return f"{len(replies)} worker(s) on {', '.join(sorted(queues))}"
