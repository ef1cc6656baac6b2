"""Result sinks over other queue systems: a ModalKit-style `QueueBackend`, taskiq, and AWS SQS.

`modalkit.queues.make_sink` picks one from `queue_config`; the built-in memory, Redis and Modal sinks
live in `modalkit.queues` itself.
"""
