"""A tabular classifier in torch: is a point inside the unit circle? The example trains its own small
model at load time (seeded, under a second on a CPU), so it needs no download."""

import modal
from pydantic import BaseModel, Field

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class Point(BaseModel):
    features: list[float] = Field(min_length=2, max_length=2, description="x and y")


class Label(BaseModel):
    label: str
    probability: float


class CircleClassifier(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, hidden: int = 32,
                 epochs: int = 300, seed: int = 0, **entry: object) -> None:  # fmt: skip
        super().__init__(model_name, model_dir, common_settings)
        import torch

        self.torch = torch
        torch.manual_seed(seed)
        points = torch.rand(2048, 2) * 4 - 2
        labels = (points.pow(2).sum(dim=1) < 1).float().unsqueeze(1)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(2, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )  # fmt: skip
        optimiser = torch.optim.Adam(self.model.parameters(), lr=0.02)
        loss = torch.nn.BCEWithLogitsLoss()
        for _ in range(epochs):
            optimiser.zero_grad()
            loss(self.model(points), labels).backward()
            optimiser.step()
        self.model.eval()

    def predict(self, inputs: list[Point]) -> list[Label]:
        torch = self.torch
        with torch.inference_mode():
            inside = torch.sigmoid(self.model(torch.tensor([p.features for p in inputs]))).squeeze(1).tolist()
        return [Label(label="inside" if p >= 0.5 else "outside", probability=max(p, 1 - p)) for p in inside]


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class Classifier(ModalService):
    inference_implementation = CircleClassifier
    model_name: str = modal.parameter(default="circle")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(Classifier, input_model=Point, output_model=Label)
