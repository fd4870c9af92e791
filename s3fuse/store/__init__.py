"""The S3 boundary: the Store contract, its botocore and in-memory implementations, retries, the link."""
