"""Fashion Florence runtime: HTTP API, micro-batcher, engine, metrics."""
