"""Shared core: config, database, Redis keys, gRPC bootstrap, errors, auth, metrics, logging."""
