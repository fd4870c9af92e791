"""`python -m s3fuse`: the same command line as the `s3fuse` script."""
from .cli import main

raise SystemExit(main())
