"""A CreateMultipartUpload whose answer was lost, then retried: the upload S3 made for the
lost attempt is aborted (its UploadId is nobody's: it would be billed forever), and
another client's upload of the same key, started before, is not (it aborted every upload
of the key: a boto3 client's Complete then failed)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import ReadTimeoutError

from tests.conftest import Backend
from tests.test_presigned_fastpath import writing_store


def test_a_retried_create_aborts_its_lost_upload_and_no_other(tmp_path: Path,
                                                               seaweedfs_backend: Backend) -> None:
    """On SeaweedFS: moto stamps every upload Initiated 2010-11-10 (nothing would be
    aborted there, the safe side)."""
    backend = seaweedfs_backend
    store, bucket = writing_store(tmp_path, backend, f"lost-{os.getpid()}", None)
    theirs = backend.client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    time.sleep(2.5)  # S3's clock stamps uploads to the second: theirs is clearly older
    create = store.write_client.create_multipart_upload
    lost: list[str] = []

    def answer_lost_once(**params: Any) -> dict[str, Any]:
        resp = create(**params)
        if not lost:  # S3 made it, the answer never came back
            lost.append(resp["UploadId"])
            raise ReadTimeoutError(endpoint_url="http://lost")
        return resp
    store.write_client.create_multipart_upload = answer_lost_once  # type: ignore[method-assign]
    ours = store.create_multipart_upload(bucket, "k")
    left = {u["UploadId"] for u in
            backend.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {theirs, ours} and lost[0] not in left
