"""A taskiq consumer of one modalkit result queue, as a user writes it; run by `taskiq worker`.

The queue (the task name and the Redis list) and the broker come from the environment; each received
message is appended as one line to the file in TASKIQ_RECEIVED.
"""

import json
import os

from taskiq_redis import ListQueueBroker

QUEUE = os.environ["TASKIQ_QUEUE"]
broker = ListQueueBroker(os.environ["TASKIQ_BROKER_URL"], queue_name=QUEUE)


@broker.task(task_name=QUEUE)
async def on_result(message: str) -> None:
    result = json.loads(message)  # a JSON string, as every modalkit queue backend sends
    with open(os.environ["TASKIQ_RECEIVED"], "a") as received:
        received.write(json.dumps(result) + "\n")
