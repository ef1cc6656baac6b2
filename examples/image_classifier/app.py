"""Image classification with uploads: `modalkit serve examples/image_classifier/app.py` or `modal deploy`.

The model is a small torch CNN that trains itself at load (seeded, about a second on a CPU) on 32x32 images it
draws: a circle, square, triangle, cross or stripes, in random colours, places, sizes and angles, with noise.
`POST /predict` takes the image as a multipart upload (a file part named `image`), as the raw bytes, or as JSON
(`{"image": {"data": <base64>}}`). Pillow decodes each image in the container, in `preprocess`; an image that
does not decode fails alone (422) while the rest of its batch runs in one forward pass.
"""

import io
import math
from typing import Annotated, Any

import modal
from pydantic import BaseModel, Field

from modalkit import File, InferenceBase, InferenceError, ModalConfig, ModalService, Upload, create_web_endpoints

SHAPES = ("circle", "square", "triangle", "cross", "stripes")
IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"]
MAX_PIXELS = 40_000_000  # decoded size; a small file can claim a huge image


class ImageIn(BaseModel):
    image: Annotated[File, Upload(content_types=IMAGE_TYPES, max_bytes=10_000_000)]
    top_k: int = Field(3, ge=1, le=len(SHAPES), description="how many labels to list in `top`")


class Scored(BaseModel):
    label: str
    score: float = Field(description="softmax probability")


class ImageOut(BaseModel):
    label: str = Field(description="the most likely shape: " + ", ".join(SHAPES))
    score: float
    top: list[Scored] = Field(description="the top_k labels, most likely first")


class ShapeClassifier(InferenceBase):
    """Trains at load; `predict` runs one forward pass per batch, over the items that decoded."""

    def __init__(self, model_name: str, model_dir: str, common_settings: dict, size: int = 32, width: int = 8,
                 train_steps: int = 128, batch: int = 32, lr: float = 0.01, seed: int = 0,
                 threads: int | None = None, **entry: object) -> None:  # fmt: skip
        super().__init__(model_name, model_dir, common_settings)
        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.size = size
        with torch.random.fork_rng(devices=[]):  # seeded without touching the process's random state
            torch.manual_seed(seed)
            self.net = shape_net(torch, width, size)
            self.loss = train(torch, self.net, size, train_steps, batch, lr, seed)
        self.net.eval()

    def warmup(self) -> None:
        self.run([ImageIn(image=File(data=sample_png("circle", seed=1)))])

    def preprocess(self, inputs: list[ImageIn]) -> list[tuple[ImageIn, Any]]:
        """Each input with its decoded image (a 3 x size x size tensor in [0, 1]), or the InferenceError that
        says why it could not be decoded."""
        return [(item, self.decode(item.image)) for item in inputs]

    def predict(self, inputs: list[tuple[ImageIn, Any]]) -> list[ImageOut | InferenceError]:
        torch = self.torch
        good = [i for i, (_, image) in enumerate(inputs) if not isinstance(image, InferenceError)]
        outputs: list[ImageOut | InferenceError] = [image for _, image in inputs]
        if good:
            with torch.inference_mode():
                probabilities = torch.softmax(self.net(torch.stack([inputs[i][1] for i in good])), dim=1)
            for i, row in zip(good, probabilities.tolist(), strict=True):
                top = sorted(zip(SHAPES, row, strict=True), key=lambda pair: -pair[1])[: inputs[i][0].top_k]
                ranked = [Scored(label=label, score=score) for label, score in top]
                outputs[i] = ImageOut(label=ranked[0].label, score=ranked[0].score, top=ranked)
        return outputs

    def decode(self, upload: File) -> Any:
        """The image as the net takes it: RGB (transparency over white), letterboxed to a square with its own
        corner colour, resized to size x size. An InferenceError (422) if Pillow cannot read it."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        name = upload.filename or "the upload"
        try:
            with Image.open(io.BytesIO(upload.data)) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    return InferenceError(f"image: {name} is {opened.width}x{opened.height}, over {MAX_PIXELS} pixels")
                opened.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale
                image = opened.convert("RGBA")
        except UnidentifiedImageError:
            return InferenceError(f"image: cannot decode {name}: not a PNG, JPEG, WebP, GIF or BMP image")
        except Exception as exc:  # whatever else Pillow raises (truncated, corrupt), the bytes are not an image
            return InferenceError(f"image: cannot decode {name}: {exc}")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
        corner = image.getpixel((0, 0))
        image = ImageOps.pad(image, (self.size, self.size), Image.Resampling.BILINEAR, color=corner)
        pixels = self.torch.frombuffer(bytearray(image.tobytes()), dtype=self.torch.uint8)
        return pixels.view(self.size, self.size, 3).permute(2, 0, 1).float() / 255

    def accuracy(self, n: int = 2000, seed: int = 12345) -> float:
        """The share of `n` freshly drawn images (seed `seed`) the net classifies right."""
        torch = self.torch
        images, labels = make_shapes(torch, n, self.size, torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            return float((self.net(images).argmax(dim=1) == labels).float().mean())


def shape_net(torch: Any, width: int, size: int) -> Any:
    """Three conv blocks on one canonical channel (32 x 32 -> 16 -> 8 -> 4), then two linear layers."""
    nn = torch.nn

    def block(inputs: int, outputs: int, kernel: int, stride: int) -> list[Any]:
        conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False)
        return [conv, nn.BatchNorm2d(outputs), nn.ReLU()]

    class ShapeNet(nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            first, second, third = (
                block(1, width, 5, 2),
                block(width, 2 * width, 3, 1),
                block(2 * width, 2 * width, 3, 2),
            )
            self.features = nn.Sequential(*first, *second, nn.MaxPool2d(2), *third)
            with torch.no_grad():  # in eval mode, so that batch norm's running statistics stay untouched
                flat = self.features.eval()(torch.zeros(1, 1, size, size)).numel()
            self.features.train()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 32), nn.ReLU(), nn.Linear(32, len(SHAPES)))

        def forward(self, images: Any) -> Any:
            return self.head(self.features(canonical(torch, images)))

    return ShapeNet()


def canonical(torch: Any, images: Any) -> Any:
    """One channel per image: its pixels along the image's own colour contrast, standardised, the background
    (the mean of a 2-pixel border) negative. Colour, brightness and polarity no longer matter; shape does."""
    var, mean = torch.var_mean(images, dim=(2, 3), keepdim=True)
    centred = images - mean
    ring = torch.ones(images.shape[-2:], dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    border = centred[..., ring].mean(dim=-1)[..., None, None]
    channel = (centred * var.sqrt() * -torch.sign(border)).sum(dim=1, keepdim=True)
    return channel / (channel.std(dim=(2, 3), keepdim=True) + 1e-3)


def train(torch: Any, net: Any, size: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """Adam with a one-cycle learning rate, each step on a fresh batch of drawn images; the last batch's loss.
    Written out rather than `torch.optim`, whose first use imports torch._dynamo: a second and a half at load."""
    images, labels = make_shapes(torch, steps * batch, size, torch.Generator().manual_seed(seed))
    params = [p for p in net.parameters() if p.requires_grad]
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    loss = torch.zeros(())
    for step in range(1, steps + 1):
        rate = lr * one_cycle(step, steps)
        rows = slice((step - 1) * batch, step * batch)
        net.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(net(images[rows]), labels[rows])
        loss.backward()
        with torch.no_grad():
            for p, m, v in zip(params, first, second, strict=True):
                m.mul_(0.9).add_(p.grad, alpha=0.1)
                v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                denominator = (v / (1 - 0.999**step)).sqrt_().add_(1e-8)
                p.addcdiv_(m, denominator, value=-rate / (1 - 0.9**step))
    return float(loss.detach())


def one_cycle(step: int, steps: int) -> float:
    """The share of the top learning rate at `step` (1-based): up from 1/25 over the first 30% of the steps,
    then down to 0 along a half cosine."""
    rise = 0.3 * steps
    if step <= rise:
        return 0.04 + 0.96 * step / rise
    return 0.5 * (1 + math.cos(math.pi * (step - rise) / (steps - rise)))


def make_shapes(torch: Any, n: int, size: int, generator: Any) -> tuple[Any, Any]:
    """`n` RGB images (n x 3 x size x size, in [0, 1]) of random shapes, and their labels (indices into SHAPES).

    Each shape is a signed distance field (negative inside), so its edge can be soft; the colours are random,
    at least 0.5 apart; a few images are grey; Gaussian noise of up to 0.1 on top.
    """

    def uniform(*shape: int) -> Any:
        return torch.rand(*shape, generator=generator)

    labels = torch.randint(0, len(SHAPES), (n,), generator=generator)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    half = size * (0.2 + 0.2 * uniform(n, 1, 1))  # half the shape's extent
    cx = size / 2 + (uniform(n, 1, 1) - 0.5) * (size - 2 * half) * 0.9
    cy = size / 2 + (uniform(n, 1, 1) - 0.5) * (size - 2 * half) * 0.9
    angle = (uniform(n, 1, 1) - 0.5) * 0.5  # up to 14 degrees either way
    arm = half * (0.25 + 0.15 * uniform(n, 1, 1))  # the cross's half-width
    scale = size / 32  # edges and stripes as at 32 x 32, so that a bigger image shrinks to one the net knows
    period = (4 + 6 * uniform(n, 1, 1)) * scale  # the stripes'
    theta, phase = uniform(n, 1, 1) * math.pi, uniform(n, 1, 1) * 2 * math.pi
    distance = torch.empty(n, size, size)
    for label, shape in enumerate(SHAPES):  # each image's field, computed for its own shape only
        mine = (labels == label).nonzero().squeeze(1)
        h, dx, dy, a = half[mine], x - cx[mine], y - cy[mine], angle[mine]
        u, v = a.cos() * dx + a.sin() * dy, a.cos() * dy - a.sin() * dx
        if shape == "circle":
            field = (dx.square() + dy.square()).sqrt() - h
        elif shape == "square":
            field = torch.maximum(u.abs(), v.abs()) - h * 0.85
        elif shape == "triangle":  # 0.55 h: the inradius
            field = torch.maximum(torch.maximum(v, 0.866 * u - 0.5 * v), -0.866 * u - 0.5 * v) - h * 0.55
        elif shape == "cross":
            w = arm[mine]
            field = torch.minimum(torch.maximum(u.abs() - h, v.abs() - w), torch.maximum(u.abs() - w, v.abs() - h))
        else:
            p, t = period[mine], theta[mine]
            field = -torch.sin(2 * math.pi * (x * t.cos() + y * t.sin()) / p + phase[mine]) * p / (2 * math.pi)
        distance[mine] = field
    softness = (0.4 + uniform(n, 1, 1)) * scale
    alpha = (0.5 - distance / softness).clamp(0, 1).unsqueeze(1)
    background = uniform(n, 3, 1, 1)
    candidates = uniform(n, 8, 3, 1, 1)  # the first of 8 colours far enough from the background
    far = (candidates - background.unsqueeze(1)).flatten(2).norm(dim=2) > 0.5
    foreground = candidates[torch.arange(n), far.float().argmax(dim=1)]
    images = background * (1 - alpha) + foreground * alpha
    grey = uniform(n, 1, 1, 1) < 0.15
    images = torch.where(grey, images.mean(dim=1, keepdim=True).expand_as(images), images)
    images = images + torch.randn(images.shape, generator=generator) * (0.1 * uniform(n, 1, 1, 1))
    return images.clamp(0, 1), labels


def sample_png(shape: str, seed: int = 0, size: int = 32) -> bytes:
    """A PNG of one drawn image of `shape`, for trying the service (and for the tests and benchmark)."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for _ in range(100):
        images, labels = make_shapes(torch, 16, size, generator)
        found = (labels == SHAPES.index(shape)).nonzero()
        if len(found):
            pixels = (images[int(found[0])] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
            out = io.BytesIO()
            Image.frombytes("RGB", (size, size), bytes(pixels.flatten().tolist())).save(out, format="PNG")
            return out.getvalue()
    raise ValueError(f"no {shape!r} drawn")  # pragma: no cover: one in five images is each shape


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(**config.get_concurrent_settings())
class Classifier(ModalService):
    inference_implementation = ShapeClassifier
    model_name: str = modal.parameter(default="shapes")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(Classifier, input_model=ImageIn, output_model=ImageOut)
