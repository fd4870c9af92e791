"""The S3 bucket every filesystem mounts, and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.seaweedfs import SeaweedFS


@dataclass(frozen=True)
class S3Target:
    """Endpoint, bucket and credentials (picklable, so worker processes can use it)."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, max_connections: int = 10) -> Any:
        """A path-style boto3 S3 client without optional payload checksums."""
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            max_pool_connections=max_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )


#: SeaweedFS volume size of the bench's server (MiB). The test server's 64 MiB volumes fill
#: with every 64 MiB object written, and while its master grows new ones a PUT in flight
#: stalls ~0.75 s: one 64 MiB upload in ten (any client: boto3, urllib3, s3fs alike) took
#: 1.1-1.6 s instead of ~0.45 s, which decided medians of 3 rounds by luck. With 1 GiB
#: volumes the bench writes ~16x fewer of them. Volumes are sparse: no disk is reserved.
BENCH_VOLUME_MB = 1024


def bench_server(workdir: Path) -> "SeaweedFS":
    """The SeaweedFS (not started) every filesystem of a bench run mounts."""
    from tests.support.seaweedfs import SeaweedFS

    return SeaweedFS(workdir, volume_size_limit_mb=BENCH_VOLUME_MB)
