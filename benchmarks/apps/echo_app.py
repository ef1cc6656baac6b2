"""The smallest service: `{"text": str}` in, the same out. Measures what serving costs with no model at all."""

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class Text(BaseModel):
    text: str


class Echo(InferenceBase):
    def predict(self, inputs: list[Text]) -> list[Text]:
        return inputs


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class EchoService(ModalService):
    inference_implementation = Echo
    model_name: str = modal.parameter(default="echo")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(EchoService, input_model=Text, output_model=Text)
