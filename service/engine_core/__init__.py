"""The engine core: the one process that owns the device, the model, the queue and the
batching, and runs the decode loop (:mod:`main`). Its scheduler (:mod:`local`: the
micro-batcher of :mod:`batching`, the result cache of :mod:`cache`) also serves in process
for tests and ``extract --local``. Knows nothing of HTTP; imports torch only through
``service.inference``, inside the process."""
