"""The GPU check's model: a MiniLM-sized BERT encoder (6 layers, 384 wide), randomly initialised, on CUDA.

No tokenizer or weights are needed (the GPU machine reaches no hub): words are hashed to ids. The input text
"cuda-fault" indexes out of bounds on the device, a real device-side assert, which poisons the CUDA context:
the container must be recycled for the next request to succeed.
"""

import hashlib
import os

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints

MAX_TOKENS = 64


class TextIn(BaseModel):
    text: str


class VectorOut(BaseModel):
    embedding: list[float]
    device: str
    pid: int


class GpuEncoder(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, **entry: object) -> None:
        super().__init__(model_name, model_dir, common_settings)
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = BertModel(config).to(self.device).eval()
        if self.device == "cuda":
            self.model = self.model.half()

    def warmup(self) -> None:
        self.predict([TextIn(text="warm up")] * 32)

    def ids(self, text: str) -> list[int]:
        words = text.split()[:MAX_TOKENS] or [""]
        return [1000 + int(hashlib.blake2b(w.encode(), digest_size=4).hexdigest(), 16) % 29000 for w in words]

    def predict(self, inputs: list[TextIn]) -> list[VectorOut]:
        torch = self.torch
        if any(i.text == "cuda-fault" for i in inputs):
            small = torch.arange(3, device=self.device)
            small[torch.tensor([10**6], device=self.device)] = 1  # out of bounds on the GPU: device-side assert
            torch.cuda.synchronize()
        rows = [self.ids(i.text) for i in inputs]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, row in enumerate(rows):
            ids[n, : len(row)] = torch.tensor(row)
            mask[n, : len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
        return [VectorOut(embedding=v, device=self.device, pid=os.getpid()) for v in pooled.cpu().tolist()]


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
class GpuService(ModalService):
    inference_implementation = GpuEncoder
    model_name: str = modal.parameter(default="encoder")
    modal_config = config


@app.function()
@modal.asgi_app()
def web():
    return create_web_endpoints(GpuService, input_model=TextIn, output_model=VectorOut)
