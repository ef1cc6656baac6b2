"""A user's own queue backend, registered by name and chosen in YAML (custom_queue.yaml), as with ModalKit."""

import json
import os

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints
from modalkit.task_queue import register_backend


class FileQueue:
    """Appends `{"queue", "message"}` lines to the file in CUSTOM_QUEUE_FILE."""

    def __init__(self) -> None:  # takes none of the queue config's keys
        self.path = os.environ["CUSTOM_QUEUE_FILE"]

    async def send_message(self, queue_name: str, message: str) -> bool:
        with open(self.path, "a") as f:
            f.write(json.dumps({"queue": queue_name, "message": json.loads(message)}) + "\n")
        return True


register_backend("file-queue", FileQueue)


class TextIn(BaseModel):
    text: str


class TextOut(BaseModel):
    text: str


class Upper(InferenceBase):
    def predict(self, inputs: list[TextIn]) -> list[TextOut]:
        return [TextOut(text=item.text.upper()) for item in inputs]


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class UpperService(ModalService):
    inference_implementation = Upper
    model_name: str = modal.parameter(default="upper")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(UpperService, input_model=TextIn, output_model=TextOut)
