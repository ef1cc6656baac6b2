"""A test service that writes down every input it is given (to $RECORDER_FILE) before it answers it, so a test
can prove which jobs reached the model; "sleep:<s>" inputs hold the container for that long."""

import os
import time

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class RecordIn(BaseModel):
    text: str


class RecordOut(BaseModel):
    text: str


class Recorder(InferenceBase):
    def predict(self, inputs: list[RecordIn]) -> list[RecordOut]:
        record = os.environ["RECORDER_FILE"]
        for item in inputs:
            with open(record, "a") as f:
                f.write(item.text + "\n")
            if item.text.startswith("sleep:"):
                with open(record + ".busy", "w") as f:  # tells a test that this input is inside predict
                    f.write(item.text)
                time.sleep(float(item.text.removeprefix("sleep:").split()[0]))
        return [RecordOut(text=item.text) for item in inputs]


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
class RecorderService(ModalService):
    inference_implementation = Recorder
    model_name: str = modal.parameter(default="recorder")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(RecorderService, input_model=RecordIn, output_model=RecordOut)
