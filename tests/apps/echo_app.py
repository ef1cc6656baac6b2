"""A test service whose inputs script its behaviour: echo, fail one item, raise a CUDA error, or sleep."""

import logging
import os
import time

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class EchoIn(BaseModel):
    text: str


class EchoOut(BaseModel):
    text: str
    model: str
    pid: int


class Echo(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, prefix: str = "", **entry: object):
        super().__init__(model_name, model_dir, common_settings)
        self.prefix = prefix
        log = os.environ.get("ECHO_LOAD_LOG")
        if log:  # one line per load_artefacts, so tests can count container starts
            with open(log, "a") as f:
                f.write(f"{model_name} {os.getpid()}\n")
        if os.environ.get("ECHO_FAIL_LOAD"):
            raise RuntimeError("weights are missing")

    def health(self) -> bool | str:
        sick = os.environ.get("ECHO_SICK_FILE")  # a test makes the model unhealthy by writing a reason there
        if sick and os.path.exists(sick):
            with open(sick) as f:
                return f.read().strip() or False
        return True

    def predict(self, inputs: list[EchoIn]) -> list[EchoOut]:
        outputs = []
        for item in inputs:
            if item.text.startswith("log:"):
                logging.getLogger("echo").info("echoing %s", item.text.removeprefix("log:"))
            if item.text == "cuda":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if item.text == "bad":
                raise ValueError("cannot echo 'bad'")
            if item.text.startswith("sleep:"):
                if os.environ.get("ECHO_LOAD_LOG"):  # tells a test that this batch is inside predict
                    with open(os.environ["ECHO_LOAD_LOG"] + ".busy", "w") as f:
                        f.write(str(os.getpid()))
                time.sleep(float(item.text.removeprefix("sleep:").split()[0]))
            outputs.append(EchoOut(text=self.prefix + item.text, model=self.model_name, pid=os.getpid()))
        return outputs


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
    return create_web_endpoints(EchoService, input_model=EchoIn, output_model=EchoOut)
