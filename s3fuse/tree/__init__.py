"""Namespaces: the contract every tree of names implements, and the bucket, manifest and root trees."""
