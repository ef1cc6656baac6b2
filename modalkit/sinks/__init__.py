"""Result sinks: where an async job's result (or failure) is pushed, by queue name.

- `builtin`: `ResultSink` (what a sink is) and the memory, Redis and `modal.Queue` sinks.
- `registry`: `make_sink`, the sink of `queue_config.backend`, and the backends registered by name.
- `delivery`: `deliver` (a push retried with backoff) and `queue_allowed` (`queue_config.allowed_queues`).
- `backend` (a ModalKit-style `QueueBackend` as a sink), `taskiq`, `sqs`: sinks over other queue systems.
- `failures`: which failed pushes are for good, and the JSON every sink sends.
"""

from modalkit.sinks.builtin import MemorySink, ModalQueueSink, RedisSink, ResultSink
from modalkit.sinks.delivery import deliver, queue_allowed
from modalkit.sinks.registry import make_sink

__all__ = ["MemorySink", "ModalQueueSink", "RedisSink", "ResultSink", "deliver", "make_sink", "queue_allowed"]
