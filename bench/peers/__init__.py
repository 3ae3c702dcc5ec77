"""Peer-server benchmarks: our service against LitServe, Ray Serve, BentoML (and PyTriton
where it runs), with the same engine and as their users would write it. Entry point:
``python -m bench.peers``."""
