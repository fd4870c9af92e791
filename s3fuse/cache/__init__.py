"""Local caches: verified data blocks, stored listings, the overlay of local changes, the cache dir."""
