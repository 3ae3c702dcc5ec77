"""Inference: the Florence-2 engine, preprocessing and constrained decoding. Exactly the part
of the service that imports torch; it knows nothing of asyncio, HTTP or the serving core."""
