"""A tiny character-level transformer that really streams: `modalkit serve examples/chat/app.py` or `modal deploy`.

The model trains at load (seeded, about two seconds on one CPU core, no download) on the opening of Lewis
Carroll's "Alice's Adventures in Wonderland" (1865, public domain), embedded below as `TEXT`, then writes one
character per step, so its English is Carroll's, rearranged. Each step runs the network over the whole window of
`CONTEXT` characters, as nanoGPT's `generate` does (no key/value cache): about 2 ms on one core, so a 64-token
answer takes over a tenth of a second and its first token comes long before its last.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import modal
from pydantic import BaseModel, Field, model_validator

from modalkit import InferenceBase, ModalConfig, StreamingService, create_web_endpoints

TOKENS_PER_CHUNK = 1  # a token is one character; each chunk the stream sends is that many tokens, as a str
CONTEXT = 192  # the characters the network reads at each step: the end of PREAMBLE + prompt + what it wrote
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))  # printable ASCII; any other character reads as a space

TEXT = """\
Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: once or \
twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it, "and \
what is the use of a book," thought Alice, "without pictures or conversations?"

So she was considering in her own mind (as well as she could, for the hot day made her feel very sleepy and \
stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the \
daisies, when suddenly a White Rabbit with pink eyes ran close by her.

There was nothing so very remarkable in that; nor did Alice think it so very much out of the way to hear the \
Rabbit say to itself, "Oh dear! Oh dear! I shall be late!" (when she thought it over afterwards, it occurred to \
her that she ought to have wondered at this, but at the time it all seemed quite natural); but when the Rabbit \
actually took a watch out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her \
feet, for it flashed across her mind that she had never before seen a rabbit with either a waistcoat-pocket, or a \
watch to take out of it, and burning with curiosity, she ran across the field after it, and fortunately was just \
in time to see it pop down a large rabbit-hole under the hedge.

In another moment down went Alice after it, never once considering how in the world she was to get out again.

The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly down, so suddenly that \
Alice had not a moment to think about stopping herself before she found herself falling down a very deep well.
"""
# What the network reads before every prompt, as a system prompt: the prompt is a new paragraph after the book's
# text. The window is thus always full, so every step costs the same.
PREAMBLE = TEXT + "\n"


class ChatMessage(BaseModel):
    role: str = Field(max_length=32, description="user, assistant, system, ...")
    content: str = Field(max_length=20_000)


class ChatIn(BaseModel):
    prompt: str = Field("", max_length=20_000, description="the text to continue")
    messages: list[ChatMessage] | None = Field(
        None, max_length=64, description="a chat instead of a prompt: `role: content` lines, then `assistant:`"
    )
    max_tokens: int = Field(64, ge=1, le=512, description="characters to write at most")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="0 always takes the likeliest character")
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**64, description="the same seed, prompt and settings give the same text"
    )
    stop: list[str] | None = Field(
        None, max_length=4, description="the answer ends before the first of these strings, which is not sent"
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> "ChatIn":
        if self.messages is not None and self.prompt:
            raise ValueError("give prompt or messages, not both")
        return self

    def text(self) -> str:
        """What the model continues: the prompt, or the chat rendered as a prompt."""
        if self.messages is None:
            return self.prompt
        return "".join(f"{m.role}: {m.content}\n" for m in self.messages) + "assistant:"


class TinyChat(InferenceBase):
    """A character-level transformer (`network`), trained at load on `TEXT`; `predict_stream` writes with it.

    `threads` is torch's thread count for the process (a local container or a Modal container holds this one
    model): one, because streams run at once on threads of their own, and a step this small gains nothing from
    being split across cores.
    """

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        common_settings: dict,
        width: int = 64,
        layers: int = 3,
        heads: int = 4,
        ngram: int = 4,
        context: int = CONTEXT,
        train_steps: int = 150,
        batch: int = 2,
        learning_rate: float = 1e-2,
        seed: int = 0,
        threads: int | None = 1,
        **entry: object,
    ) -> None:
        super().__init__(model_name, model_dir, common_settings)
        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.context = context
        self.index = {c: i for i, c in enumerate(VOCABULARY)}
        with torch.random.fork_rng(devices=[]):  # seeded weights; the process's global generator is left as it was
            torch.manual_seed(seed)
            self.net = network(torch, len(VOCABULARY), context, width, layers, heads, ngram)
        self.loss = train(torch, self.net, self.encode(TEXT), context, train_steps, batch, learning_rate, seed)
        self.net.eval()

    def encode(self, text: str) -> list[int]:
        space = self.index[" "]
        return [self.index.get(c, space) for c in text]

    def warmup(self) -> None:
        for _ in self.generate("Alice", max_tokens=2, temperature=0.0, seed=0):
            pass

    def predict_stream(self, item: ChatIn) -> Iterator[str]:
        tokens = self.generate(item.text(), item.max_tokens, item.temperature, item.seed)
        return chunked(before_stop(tokens, item.stop or []), TOKENS_PER_CHUNK)

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int | None) -> Iterator[str]:
        """`max_tokens` characters after `prompt`, one per step, sampled at `temperature` (0: the likeliest).

        Sampling uses a generator of its own: streams run at once on threads, so none may draw from torch's global
        one, and a seed gives the same text every time."""
        torch = self.torch
        sampler = torch.Generator()
        if seed is None:
            sampler.seed()
        else:
            sampler.manual_seed(seed)
        window = self.encode((PREAMBLE + prompt)[-self.context :])
        for _ in range(max_tokens):
            # Grad mode is per thread and each step may run on another one: enter it per step, never across a yield.
            with torch.inference_mode():
                logits = self.net(torch.tensor([window]))[0, -1]
                if temperature == 0:
                    choice = int(logits.argmax())
                else:
                    choice = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=sampler))
            window = [*window[1:], choice]
            yield VOCABULARY[choice]


def before_stop(tokens: Iterable[str], stops: list[str]) -> Iterator[str]:
    """`tokens` up to the first stop string, which is not sent. Tokens that could begin a stop string wait until
    they cannot (or the stream ends), so a stop string split across tokens is never sent either."""
    stops = [s for s in stops if s]
    if not stops:
        yield from tokens
        return
    held: list[str] = []  # made, not yet sent
    for token in tokens:
        held.append(token)
        text = "".join(held)
        found = [at for at in (text.find(s) for s in stops) if at >= 0]
        if found:
            yield from _clipped(held, min(found))
            return
        keep = max(_overlap(text, s) for s in stops)  # the end of the text that may begin a stop string
        while held and len(text) - len(held[0]) >= keep:
            text = text[len(held[0]) :]
            yield held.pop(0)
    yield from held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that `stop` begins with."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def _clipped(tokens: list[str], end: int) -> Iterator[str]:
    """The tokens that make the first `end` characters of their text (the last one cut short if need be)."""
    for token in tokens:
        if end <= 0:
            return
        yield token[:end]
        end -= len(token)


def chunked(tokens: Iterable[str], size: int) -> Iterator[str]:
    """The tokens, `size` to a chunk (the last chunk may be shorter)."""
    group: list[str] = []
    for token in tokens:
        group.append(token)
        if len(group) == size:
            yield "".join(group)
            group = []
    if group:
        yield "".join(group)


def network(torch: Any, vocabulary: int, context: int, width: int, layers: int, heads: int, ngram: int) -> Any:
    """A small GPT over characters. Each position's input sums an embedding of its character and of the `ngram - 1`
    before it (a causal convolution, so letter patterns are learnt in a few steps); then causal attention blocks."""
    nn, functional = torch.nn, torch.nn.functional

    class Block(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x: Any) -> Any:
            batch, length, _ = x.shape
            qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, heads, width // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
            return x + self.mlp(self.mlp_norm(x))

    class CharTransformer(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.characters = nn.ModuleList(nn.Embedding(vocabulary, width) for _ in range(ngram))
            self.positions = nn.Parameter(torch.randn(context, width) * 0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocabulary)

        def forward(self, ids: Any) -> Any:
            length = ids.shape[1]
            x = self.positions[:length]
            for back, embedding in enumerate(self.characters):  # the character `back` places before each position
                x = x + embedding(functional.pad(ids, (back, 0))[:, :length])
            return self.head(self.norm(self.blocks(x)))

    return CharTransformer()


def train(torch: Any, net: Any, ids: list[int], context: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """Adam on random windows of the text, warm-up then cosine decay; returns the last batch's loss.

    Adam is written out here: `torch.optim` imports torch._dynamo on first use, which costs more than the training."""
    import math

    windows = torch.tensor(ids).unfold(0, context + 1, 1)  # every window of context + 1 characters
    picker = torch.Generator().manual_seed(seed)
    params = list(net.parameters())
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    beta1, beta2, loss = 0.9, 0.99, float("nan")
    for step in range(1, steps + 1):
        rate = lr * min(1.0, step / 10) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        chosen = windows[torch.randint(0, len(windows), (batch,), generator=picker)]
        logits = net(chosen[:, :-1])
        batch_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chosen[:, 1:].flatten())
        net.zero_grad(set_to_none=True)
        batch_loss.backward()
        with torch.no_grad():
            for p, (mean, square) in zip(params, moments, strict=True):
                mean.lerp_(p.grad, 1 - beta1)
                square.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                scale = rate * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                p.addcdiv_(mean, square.sqrt().add_(1e-8), value=-scale)
        loss = float(batch_loss.detach())
    return loss


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class Chat(StreamingService):
    inference_implementation = TinyChat
    model_name: str = modal.parameter(default="tiny-chat")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(Chat, input_model=ChatIn, output_model=str)
