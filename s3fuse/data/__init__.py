"""The read path: object bytes from memory, the disk cache or S3, and read-ahead within and across files."""
