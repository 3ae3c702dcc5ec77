"""Telemetry: Prometheus metrics, structured logs and optional tracing spans."""
