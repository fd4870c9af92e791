"""The Prometheus endpoint (--metrics-address), scraped during a workload on a real mount:
S3 requests by operation and status, bytes, cache, upload queue, link, FUSE latencies."""
from __future__ import annotations

import os
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from s3fuse.demo import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_during_a_workload_shows_what_the_mount_did(s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="data/a.bin", Body=b"a" * 300_000)
    port = free_port()
    m = mount_factory("--source", f"s3://{bucket}", "--metrics-address", f"127.0.0.1:{port}")
    root = m.path(bucket)
    before = scrape(port)
    assert value(before, "s3fuse_link_online") == 1
    assert value(before, "s3fuse_cache_limit_bytes") > 0

    assert sorted(os.listdir(root / "data")) == ["a.bin"]
    assert (root / "data" / "a.bin").read_bytes() == b"a" * 300_000
    (root / "new.txt").write_bytes(b"n" * 5000)
    m.assert_idle()
    try:
        os.stat(root / "missing")
    except FileNotFoundError:
        pass
    after = scrape(port)

    assert value(after, "s3fuse_s3_requests_total", operation="ListObjectsV2", status="200") >= 1
    assert value(after, "s3fuse_s3_requests_total", operation="GetObject", status="200") + \
        value(after, "s3fuse_s3_requests_total", operation="GetObject", status="206") >= 1
    assert value(after, "s3fuse_s3_requests_total", operation="PutObject", status="200") >= 1
    assert value(after, "s3fuse_s3_object_bytes_total", direction="in") >= 300_000
    assert value(after, "s3fuse_s3_object_bytes_total", direction="out") >= 5000
    assert value(after, "s3fuse_cache_blocks_total", result="miss") >= 1
    assert value(after, "s3fuse_upload_queue_files") == 0
    assert value(after, "s3fuse_fuse_operation_seconds_count", operation="lookup") >= 2
    assert value(after, "s3fuse_fuse_operation_seconds_count", operation="read") >= 1
    assert value(after, "s3fuse_fuse_operation_seconds_bucket", operation="lookup", le="+Inf") \
        == value(after, "s3fuse_fuse_operation_seconds_count", operation="lookup")
    assert value(after, "s3fuse_fuse_errors_total", operation="lookup", errno="2") == 0  # a miss
    # is an answer (a negative entry), not an error; the scrape shows no key or path
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert bucket not in text and "new.txt" not in text


def test_a_taken_metrics_port_is_one_line_before_mounting(bucket, mount_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = mount_factory("--source", f"s3://{bucket}", "--metrics-address", f"127.0.0.1:{port}",
                          start=False)
        m.mountpoint.mkdir(parents=True)
        import subprocess
        res = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"s3fuse: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
    assert not os.path.ismount(m.mountpoint)


def test_ls_l_asks_for_security_labels_and_acls_once_not_per_file(s3, bucket, mount_factory):
    """getxattr of security.selinux / system.posix_acl_access answers ENOTSUP: coreutils
    then stops asking on this mount, so `ls -l` of 40 files is 40 lookups, not 120 requests."""
    import subprocess
    for i in range(40):
        s3.put_object(Bucket=bucket, Key=f"many/f{i:02d}", Body=b"x")
    port = free_port()
    m = mount_factory("--source", f"s3://{bucket}", "--metrics-address", f"127.0.0.1:{port}")
    before = value(scrape(port), "s3fuse_fuse_operation_seconds_count", operation="getxattr")
    listed = subprocess.run(["ls", "-l", str(m.path(bucket, "many"))], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 41, listed.stderr
    asked = value(scrape(port), "s3fuse_fuse_operation_seconds_count", operation="getxattr")
    assert asked - before <= 4, asked - before
