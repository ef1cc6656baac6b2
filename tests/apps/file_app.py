"""A test service whose input is a file: it answers what it received (length, sha256, filename, content type).

`sleep` keeps a batch busy, so a test can kill the server while a job runs."""

import hashlib
import os
import time

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints
from modalkit.files import File


class PhotoIn(BaseModel):
    image: File
    label: str = ""
    sleep: float = 0.0


class PhotoOut(BaseModel):
    length: int
    sha256: str
    filename: str | None
    content_type: str | None
    label: str
    pid: int


class Photo(InferenceBase):
    def predict(self, inputs: list[PhotoIn]) -> list[PhotoOut]:
        outputs = []
        for item in inputs:
            data = item.image.data
            assert isinstance(data, bytes), f"the model got {type(data).__name__}, not bytes"
            if item.sleep:
                time.sleep(item.sleep)
            outputs.append(
                PhotoOut(
                    length=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    filename=item.image.filename,
                    content_type=item.image.content_type,
                    label=item.label,
                    pid=os.getpid(),
                )
            )
        return outputs


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class PhotoService(ModalService):
    inference_implementation = Photo
    model_name: str = modal.parameter(default="photo")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(PhotoService, input_model=PhotoIn, output_model=PhotoOut)
