"""Batch jobs beyond one process: the Ray Data extraction job (``extract --engine ray``)."""
