"""Small shared machinery: the supervisor, single flight, a byte-capped LRU, events, test hooks."""
