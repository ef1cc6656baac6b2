"""A test service that reports, from inside its container, what the container template left it: whether torch was
imported before the model loaded, whether CUDA was initialised then, its parent, its environment, its random
numbers; and, on a GPU, that it can use CUDA. Its load imports torch inside a function, as the MiniLM example
does."""

import json
import os
import sys

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class ProbeIn(BaseModel):
    text: str


class ProbeOut(BaseModel):
    facts: str


class Probe(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, **entry: object):
        super().__init__(model_name, model_dir, common_settings)
        torch_before_load = "torch" in sys.modules
        import torch

        self.facts = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "sid": os.getsid(0),
            "torch_before_load": torch_before_load,
            "cuda_initialised_at_load": torch.cuda.is_initialized(),
            "probe_env": os.environ.get("PROBE_ENV"),
            "random": torch.rand(1).item(),
            "argv0": sys.argv[0],
        }
        if torch.cuda.is_available():  # a forked container uses CUDA as a spawned one does
            self.facts["cuda_sum"] = torch.ones(2, device="cuda").sum().item()

    def predict(self, inputs: list[ProbeIn]) -> list[ProbeOut]:
        return [ProbeOut(facts=json.dumps(self.facts)) for _ in inputs]


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class ProbeService(ModalService):
    inference_implementation = Probe
    model_name: str = modal.parameter(default="probe")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(ProbeService, input_model=ProbeIn, output_model=ProbeOut)
