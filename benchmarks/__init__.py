"""Benchmarks comparing s3fuse with s3fs-fuse and rclone mount on a local SeaweedFS."""
