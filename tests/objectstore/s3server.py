"""A local S3 server: moto's, on a free port of 127.0.0.1, authenticating every request (the tests'
fixture and ``bench/bench_warehouse.py --s3`` start it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUCKET = "attnwh-test"
OTHER_BUCKET = "attnwh-other"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    def url(self, name: str = "") -> str:
        """A fresh warehouse prefix in the test bucket."""
        return f"s3://{BUCKET}/{name or 'wh'}-{uuid.uuid4().hex[:8]}"

    def environment(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, with the buckets. The first three requests (creating
    a user, its key and its policy) need no credentials; every later one is authenticated, so wrong
    credentials fail."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="attnwh")
    key = iam.create_access_key(UserName="attnwh")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="attnwh", PolicyName="everything", PolicyDocument=json.dumps(policy))
    server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    client = server.client()
    for bucket in (BUCKET, OTHER_BUCKET):
        client.create_bucket(Bucket=bucket)
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
