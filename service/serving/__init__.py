"""The API server's serving layer: admission (one capacity for every API server), the
extraction use case (fetch, decode, resize, one call to the engine), the engine core's
client and the lifecycle. Knows nothing of HTTP; never imports torch nor the engine
core's modules (the in-process engine is built by name, only for tests and
``extract --local``)."""
