"""A test service that tallies what it computes: one line per predicted item in $TALLY_LOG; "sleep:N" sleeps N s."""

import os
import time

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class TallyIn(BaseModel):
    text: str


class TallyOut(BaseModel):
    text: str


class Tally(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, **entry: object):
        super().__init__(model_name, model_dir, common_settings)

    def predict(self, inputs: list[TallyIn]) -> list[TallyOut]:
        outputs = []
        for item in inputs:
            with open(os.environ["TALLY_LOG"], "a") as f:
                f.write(item.text + "\n")
            if item.text.startswith("sleep:"):
                time.sleep(float(item.text.removeprefix("sleep:").split()[0]))
            outputs.append(TallyOut(text=item.text))
        return outputs


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class TallyService(ModalService):
    inference_implementation = Tally
    model_name: str = modal.parameter(default="echo")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(TallyService, input_model=TallyIn, output_model=TallyOut)
