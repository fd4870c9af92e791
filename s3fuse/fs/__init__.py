"""The FUSE side: pyfuse3 requests to namespace calls, inodes, handles, page-cache coherence."""
