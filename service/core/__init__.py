"""The serving core: admission, the micro-batcher, the result cache, the extraction use case
and the model's lifecycle. Knows nothing of HTTP; never imports torch (the engine is built
only by ``lifecycle``, by name)."""
