"""What crosses between the service's processes: the messages between the API servers and
the engine core (:mod:`messages`), how they travel (:mod:`channel`, ZeroMQ), and the state
the supervisor shares with every process (:mod:`shared_state`). No torch, no HTTP."""
