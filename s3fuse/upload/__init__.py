"""Write-back: staging files, a durable journal, and background uploads to S3.

staging.py (local bytes), journal.py (what is pending, in SQLite), uploader.py (one
upload, blocking), queue.py (trio workers, sync/drain, status) — see each module.
"""
from .journal import UNKNOWN, Expected, Job, Journal
from .queue import UploadFailed, UploadQueue
from .staging import Staging
from .uploader import Uploader, UploadResult

__all__ = [
           "UNKNOWN",
           "Expected",
           "Job",
           "Journal",
           "Staging",
           "UploadFailed",
           "UploadQueue",
           "UploadResult",
           "Uploader",
]
