"""The OpenAI API's request bodies, and how they map onto a service's own input and output models.

Embeddings: the input model's one text field takes each `input` string, the output model's one list-of-floats
field is the embedding, and an int field named `tokens` (if any) counts the tokens of `usage`.
Generation: `prompt` or `messages`, `max_tokens`, `temperature`, `seed` and `stop` go to the input model's fields of
those names (a model without `messages` gets the chat rendered as a prompt); a chunk is the text itself (a str)
or has a `text` field.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from modalkit.outcome import Encoded

TOKEN_FIELDS = ("tokens", "token_count", "prompt_tokens")


class OpenAIRequest(BaseModel):
    """What the generation requests share. Parameters modalkit does not use (top_p, user, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1  # one choice per request

    def stops(self) -> list[str]:
        listed = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in listed if s]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; of a list of content parts, the text parts joined."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]

    def prompt_text(self) -> str | None:
        """The one prompt; None for several (modalkit answers one choice per request)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="text, or a list of texts (token arrays are not accepted)")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


@dataclass(frozen=True)
class EmbeddingFields:
    """Which fields of the service's models an embeddings request uses."""

    text: str
    embedding: str
    tokens: str | None

    @classmethod
    def of(cls, input_model: type[BaseModel], output_model: type[BaseModel]) -> EmbeddingFields | None:
        """None when the models do not look like text in, embedding out (then there is no /v1/embeddings)."""
        texts = [name for name, f in input_model.model_fields.items() if f.annotation is str]
        others_required = [n for n, f in input_model.model_fields.items() if f.is_required() and n not in texts]
        vectors = [name for name, f in output_model.model_fields.items() if _is_float_list(f.annotation)]
        if len(texts) != 1 or others_required or len(vectors) != 1:
            return None
        tokens = next((n for n in TOKEN_FIELDS if _field_is(output_model, n, int)), None)
        return cls(texts[0], vectors[0], tokens)


def generation_input(fields: dict[str, Any], request: ChatRequest | CompletionRequest) -> dict[str, Any]:
    """The service input an OpenAI generation request asks for, as a dict for the input model to validate."""
    found: dict[str, Any] = {}
    if isinstance(request, ChatRequest):
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        if "messages" in fields:
            found["messages"] = messages
        else:
            found["prompt"] = render_chat(messages)
    elif "prompt" in fields:
        found["prompt"] = request.prompt_text()
    else:
        found["messages"] = [{"role": "user", "content": request.prompt_text()}]
    wanted = {
        "max_tokens": request.token_limit(),
        "temperature": request.temperature,
        "seed": request.seed,
        "stop": request.stops() or None,
    }
    found.update({name: value for name, value in wanted.items() if value is not None and name in fields})
    return found


def render_chat(messages: list[dict[str, str]]) -> str:
    """A chat as one prompt, for a model that takes a prompt: `role: content` lines, then `assistant:`."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chunk_text(chunk: Any) -> str:
    """The text of one generated chunk: the chunk itself, or its `text` field."""
    if isinstance(chunk, Encoded):  # a local container sends each chunk as its JSON
        chunk = pydantic_core.from_json(chunk)
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, dict):
        return str(chunk.get("text", ""))
    return str(getattr(chunk, "text", ""))


def _is_float_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation) == (float,)


def _field_is(model: type[BaseModel], name: str, kind: type) -> bool:
    field = model.model_fields.get(name)
    return field is not None and field.annotation is kind
