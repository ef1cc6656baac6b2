"""ModalKit's deployment guide, run unchanged: the guide's app.py below the model it leaves to the user.

`modalkit serve examples/modalkit_guide/app.py` serves it locally; `modal deploy` deploys it. The model is
written the ModalKit way: an `InferencePipeline` with preprocess -> predict -> postprocess and a dict
between the steps. It scores the sentiment of a text with a word list from the model entry.
"""

import re

from pydantic import BaseModel, Field

from modalkit.inference_pipeline import InferencePipeline
from modalkit.iomodel import InferenceOutputModel


class MyInput(BaseModel):
    text: str = Field(max_length=10_000)


class MyOutput(InferenceOutputModel):
    label: str = ""
    score: float = 0.0


class MyInference(InferencePipeline):
    def __init__(self, model_name, all_model_data_folder, common_settings, *args, **kwargs):
        super().__init__(model_name, all_model_data_folder, common_settings, *args, **kwargs)
        self.weights = {word: float(w) for word, w in kwargs["weights"].items()}
        self.threshold = float(kwargs.get("threshold", 0.0))

    def preprocess(self, input_list):
        return {"tokens": [re.findall(r"[a-z']+", item.text.lower()) for item in input_list]}

    def predict(self, input_list, preprocessed_data):
        scores = []
        for tokens in preprocessed_data["tokens"]:
            known = [self.weights[t] for t in tokens if t in self.weights]
            scores.append(sum(known) / len(known) if known else None)
        return {"scores": scores}

    def postprocess(self, input_list, raw_output):
        outputs = []
        for score in raw_output["scores"]:
            if score is None:  # a per-item failure, reported the ModalKit way
                outputs.append(MyOutput(status="error", error="no known words in the text"))
            else:
                label = "positive" if score > self.threshold else "negative"
                outputs.append(MyOutput(status="success", label=label, score=round(score, 4)))
        return outputs


# --- The deployment guide's app.py, exactly as written there. ---
import modal
from modalkit.modal_service import ModalService, create_web_endpoints
from modalkit.modal_config import ModalConfig
from modalkit.settings import Settings

# Load configuration
Settings.model_config["yaml_file"] = "modalkit.yaml"
modal_config = ModalConfig()

# Create Modal app
app = modal.App(name=modal_config.app_name)

@app.cls(**modal_config.get_app_cls_settings())
class MyApp(ModalService):
    inference_implementation = MyInference
    model_name: str = modal.parameter(default="my_model")
    modal_utils: ModalConfig = modal_config

@app.function(**modal_config.get_handler_settings())
@modal.asgi_app()
def web_endpoints():
    return create_web_endpoints(
        app_cls=MyApp,
        input_model=MyInput,
        output_model=MyOutput
    )
