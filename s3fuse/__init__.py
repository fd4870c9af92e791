"""s3fuse: S3 buckets and s3exchange manifests as a local, offline-capable filesystem."""

__version__ = "0.1.0"
