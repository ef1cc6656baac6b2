"""A streaming test service whose inputs script it: `tokens` chunks, `delay` seconds apart, that can fail midway.

`fail_at` raises a ValueError, `reject_at` an InferenceError (409) and `cuda_at` a CUDA error before that token.
With `progress` set, the generator appends each token's index to that file as it makes it, and writes how it
ended ("finished" or "closed") to `<progress>.end`. `STREAM_FAIL_LOAD` in the environment fails the load.
"""

import os
import time
from collections.abc import Iterator

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, InferenceError, ModalConfig, StreamingService, create_web_endpoints


class StreamIn(BaseModel):
    text: str = ""
    tokens: int = 5
    delay: float = 0.02
    fail_at: int | None = None
    reject_at: int | None = None
    cuda_at: int | None = None
    progress: str | None = None


class Token(BaseModel):
    text: str
    index: int
    pid: int


def _note(path: str | None, line: str, suffix: str = "") -> None:
    if path:
        with open(path + suffix, "a") as f:
            f.write(line)


class Tokens(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, **entry: object):
        super().__init__(model_name, model_dir, common_settings)
        if os.environ.get("STREAM_FAIL_LOAD"):
            raise RuntimeError("weights are missing")

    def predict_stream(self, item: StreamIn) -> Iterator[Token]:
        try:
            for index in range(item.tokens):
                time.sleep(item.delay)
                if index == item.fail_at:
                    raise ValueError(f"the model broke at token {index}")
                if index == item.reject_at:
                    raise InferenceError(f"token {index} is refused", 409)
                if index == item.cuda_at:
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                _note(item.progress, f"{index}\n")
                yield Token(text=item.text, index=index, pid=os.getpid())
        except GeneratorExit:
            _note(item.progress, "closed", ".end")
            raise
        _note(item.progress, "finished", ".end")


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
class TokenService(StreamingService):
    inference_implementation = Tokens
    model_name: str = modal.parameter(default="tokens")
    modal_config = config


@app.function()
@modal.asgi_app()
def web():
    return create_web_endpoints(TokenService, input_model=StreamIn, output_model=Token)
