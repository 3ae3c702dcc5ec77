"""HTTP layer: thin routes, problem responses and pure-ASGI middleware."""
