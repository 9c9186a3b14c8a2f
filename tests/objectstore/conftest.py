"""Fixtures of the object-store tests: the local S3 server (``s3server``) and its credentials in the environment."""

from __future__ import annotations

import pytest

from tests.objectstore.s3server import S3Server, s3_server


@pytest.fixture(scope="session")
def s3_session(tmp_path_factory) -> S3Server:
    with s3_server(tmp_path_factory.mktemp("moto") / "server.log") as server:
        yield server


@pytest.fixture
def s3(s3_session, monkeypatch, tmp_path) -> S3Server:
    """The server's credentials in this process's environment (no AWS files of the machine read)."""
    for name, value in s3_session.environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "no-aws-file"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    _forget_clients()
    yield s3_session
    _forget_clients()


def _forget_clients() -> None:
    """fsspec caches filesystems by their arguments, not the environment: tests that change credentials start afresh."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
