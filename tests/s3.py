"""An S3 stand-in for tests: moto's server on loopback, with a bucket made for us."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import free_port, poll_until

BUCKET = "batchgate-test"


class MotoS3Process:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server (what batchgate and boto3 read)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> MotoS3Process:
        server = Path(sys.executable).parent / "moto_server"
        self._process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        poll_until(self._answers, timeout=30, message="moto_server did not start")
        httpx.put(f"{self.url}/{BUCKET}").raise_for_status()  # create the bucket (path style)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    def keys(self, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
