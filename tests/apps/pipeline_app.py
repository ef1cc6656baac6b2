"""A ModalKit-style app: an `InferencePipeline` (three steps, a dict between them) behind ModalKit's imports."""

import modal
from pydantic import BaseModel

from modalkit.inference_pipeline import InferencePipeline
from modalkit.iomodel import InferenceOutputModel
from modalkit.modal_config import ModalConfig
from modalkit.modal_service import ModalService, create_web_endpoints


class Numbers(BaseModel):
    values: list[float]


class Stats(InferenceOutputModel):
    mean: float = 0.0
    folder: str = ""
    reloads: int = 0


class MeanPipeline(InferencePipeline):
    def __init__(self, model_name, all_model_data_folder, common_settings, *args, **kwargs):
        super().__init__(model_name, all_model_data_folder, common_settings, *args, **kwargs)
        self.scale = float(kwargs.get("scale", 1.0))
        self.reloads = 0

    def on_volume_reload(self):
        self.reloads += 1

    def preprocess(self, input_list):
        for item in input_list:
            if any(v != v for v in item.values):  # NaN: this item's fault, raised mid-batch
                raise ValueError("NaN in values")
        return {"sums": [sum(i.values) for i in input_list], "counts": [len(i.values) for i in input_list]}

    def predict(self, input_list, preprocessed_data):
        sums, counts = preprocessed_data["sums"], preprocessed_data["counts"]
        return {"means": [s / c * self.scale if c else None for s, c in zip(sums, counts, strict=True)]}

    def postprocess(self, input_list, raw_output):
        return [
            Stats(status="success", mean=m, folder=self.all_model_data_folder, reloads=self.reloads)
            if m is not None
            else Stats(status="error", error="values is empty")
            for m in raw_output["means"]
        ]


modal_config = ModalConfig()
app = modal.App(name=modal_config.app_name)


@app.cls(**modal_config.get_app_cls_settings())
class PipelineApp(ModalService):
    inference_implementation = MeanPipeline
    model_name: str = modal.parameter(default="mean")
    modal_utils: ModalConfig = modal_config


@app.function(**modal_config.get_handler_settings())
@modal.asgi_app()
def web_endpoints():
    return create_web_endpoints(app_cls=PipelineApp, input_model=Numbers, output_model=Stats)
