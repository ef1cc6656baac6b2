"""`SQSSink`: an AWS SQS queue per queue name (created when missing, as ModalKit did) or per queue URL."""

from __future__ import annotations

import hashlib
from typing import Any

from modalkit import aws
from modalkit.sinks.failures import json_message

QUEUE_PATH = "app_settings.queue_config.backend"


class SQSSink:
    """A queue is a name (looked up once with `get_queue_url`, created if missing) or a full queue URL.

    The message body is the JSON of the message. Names ending in `.fifo` make FIFO queues; their messages
    share one group and are deduplicated by content, so a redelivered result is not received twice.
    """

    def __init__(self, client: Any | None = None) -> None:
        self.client = client if client is not None else aws.client("sqs", QUEUE_PATH)
        self._urls: dict[str, str] = {}

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.send(queue, json_message(message))

    def send(self, queue: str, body: str) -> str:
        """Send one body; the SQS MessageId."""
        url = self.queue_url(queue)
        extra = {}
        if url.endswith(".fifo"):
            extra = {"MessageGroupId": "modalkit", "MessageDeduplicationId": hashlib.sha256(body.encode()).hexdigest()}
        return str(self.client.send_message(QueueUrl=url, MessageBody=body, **extra)["MessageId"])

    def queue_url(self, queue: str) -> str:
        if queue.startswith(("https://", "http://")):
            return queue
        url = self._urls.get(queue)
        if url is None:
            try:
                url = str(self.client.get_queue_url(QueueName=queue)["QueueUrl"])
            except self.client.exceptions.QueueDoesNotExist:
                attributes = {"FifoQueue": "true"} if queue.endswith(".fifo") else {}
                url = str(self.client.create_queue(QueueName=queue, Attributes=attributes)["QueueUrl"])
            self._urls[queue] = url
        return url

    def close(self) -> None:
        self.client.close()
