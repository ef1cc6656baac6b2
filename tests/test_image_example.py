"""The image classifier example's model in-process, without a server: it trains fast and deterministically,
really classifies shapes (drawn by its own generator and by Pillow), and a bad image fails alone in its batch.

examples/image_classifier/app.py trains a small CNN at load; these tests load it once and call `run` on batches
of `ImageIn`s, as a container does (Pillow decodes in `preprocess`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageDraw

from modalkit import File, InferenceError
from modalkit.app_loader import import_app
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "image_classifier"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODALKIT_CONFIG", str(EXAMPLE / "modalkit.yaml"))
        import torch  # noqa: F401  (imported before the load is timed, as a container has it by then)

        yield import_app(EXAMPLE / "app.py")


@pytest.fixture(scope="module")
def entry(example: ModuleType) -> dict[str, Any]:
    return dict(example.config.model_settings.model_entries["shapes"])


@pytest.fixture(scope="module")
def loaded(example: ModuleType, entry: dict[str, Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    model = example.ShapeClassifier("shapes", "models", {}, **entry)
    return model, time.perf_counter() - started


@pytest.fixture(scope="module")
def model(loaded: tuple[Any, float]) -> Any:
    return loaded[0]


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def drawn(
    shape: str, size: int = 96, mode: str = "RGB", colour: Any = (200, 30, 30), ground: Any = (250, 250, 240)
) -> Image.Image:
    """`shape` drawn with Pillow's ImageDraw, off-centre, about half the image across."""
    image = Image.new(mode, (size, size), ground)
    draw = ImageDraw.Draw(image)
    s = size / 96
    box = [30 * s, 24 * s, 72 * s, 66 * s]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(51 * s, 22 * s), (27 * s, 64 * s), (75 * s, 64 * s)], fill=colour)
    elif shape == "cross":
        draw.rectangle([45 * s, 22 * s, 57 * s, 70 * s], fill=colour)
        draw.rectangle([27 * s, 40 * s, 75 * s, 52 * s], fill=colour)
    else:
        for x in range(0, size, int(16 * s)):
            draw.rectangle([x, 0, x + 8 * s - 1, size], fill=colour)
    return image


def item(example: ModuleType, data: bytes, **fields: Any) -> Any:
    return example.ImageIn(image=File(data=data, filename="upload.png", content_type="image/png"), **fields)


def test_learns_at_load(loaded: tuple[Any, float]) -> None:
    model, _ = loaded  # how long the training at load takes is measured by benchmarks/images.py, never asserted here
    assert model.loss < 0.5, "the last training batch's loss"


def test_classifies_fresh_generated_images(model: Any) -> None:
    assert model.accuracy(n=2000, seed=2024) > 0.9


def test_same_seed_same_weights_and_predictions(example: ModuleType, entry: dict[str, Any], model: Any) -> None:
    import torch

    again = example.ShapeClassifier("shapes", "models", {}, **entry)
    for (name, mine), theirs in zip(model.net.state_dict().items(), again.net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    batch = [item(example, example.sample_png(shape, seed=7)) for shape in example.SHAPES]
    assert [o.model_dump() for o in model.run(batch)] == [o.model_dump() for o in again.run(batch)]
    other = example.ShapeClassifier("shapes", "models", {}, **{**entry, "seed": 1})
    assert not torch.equal(model.net.head[-1].weight, other.net.head[-1].weight)


def test_loading_leaves_the_global_random_state_alone(example: ModuleType, entry: dict[str, Any]) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    example.ShapeClassifier("shapes", "models", {}, **entry)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "cross", "stripes"])
def test_a_pillow_drawn_png_is_classified_right(example: ModuleType, model: Any, shape: str) -> None:
    [out] = model.run([item(example, encoded(drawn(shape)), top_k=5)])
    assert isinstance(out, example.ImageOut)
    assert out.label == shape, out.top
    assert out.score == out.top[0].score
    scores = [s.score for s in out.top]
    assert scores == sorted(scores, reverse=True) and {s.label for s in out.top} == set(example.SHAPES)
    assert sum(s.score for s in out.top) == pytest.approx(1.0, abs=1e-4)


def test_top_k(example: ModuleType, model: Any) -> None:
    data = example.sample_png("cross", seed=3)
    assert [len(o.top) for o in model.run([item(example, data, top_k=k) for k in (1, 3, 5)])] == [1, 3, 5]
    with pytest.raises(ValueError):
        item(example, data, top_k=6)


@pytest.mark.parametrize(
    ("image", "format"),
    [
        (drawn("circle", mode="L", colour=20, ground=230), "PNG"),  # greyscale
        (drawn("circle", mode="RGBA", colour=(0, 90, 200, 255), ground=(0, 0, 0, 0)), "PNG"),  # transparent ground
        (drawn("circle", size=240), "JPEG"),  # bigger, and lossy
        (drawn("circle", size=20), "BMP"),  # smaller
        (drawn("circle"), "GIF"),  # a palette image
        (drawn("circle", colour=(240, 240, 40), ground=(20, 20, 90)), "WEBP"),  # light on dark
        (drawn("circle", size=64).convert("CMYK"), "JPEG"),
    ],
    ids=["grey", "rgba", "jpeg-240", "bmp-20", "gif", "webp", "cmyk-jpeg"],
)
def test_other_modes_sizes_and_formats(example: ModuleType, model: Any, image: Image.Image, format: str) -> None:
    [out] = model.run([item(example, encoded(image, format))])
    assert isinstance(out, example.ImageOut)
    assert out.label == "circle", out.top


def test_a_wide_image_keeps_its_shape(example: ModuleType, model: Any) -> None:
    wide = Image.new("RGB", (192, 96), (250, 250, 240))
    wide.paste(drawn("square"), (48, 0))  # squashed to a square it would be a rectangle; letterboxed, a square
    [out] = model.run([item(example, encoded(wide))])
    assert out.label == "square", out.top


def test_a_corrupt_image_fails_alone_in_its_batch(example: ModuleType, model: Any) -> None:
    import random

    png = encoded(drawn("triangle"))
    batch = [
        item(example, png),
        item(example, random.Random(0).randbytes(2000)),  # not an image at all
        item(example, example.sample_png("square", seed=4)),
        item(example, png[: len(png) // 2]),  # a truncated PNG
        item(example, b""),
        item(example, png),
    ]
    calls = []
    forward = model.net.forward
    model.net.forward = lambda images: calls.append(len(images)) or forward(images)
    try:
        outputs = model.run(batch)
    finally:
        del model.net.forward
    assert calls == [3], "one forward pass, over the three images that decoded"
    ok, bad = "ImageOut", "InferenceError"
    assert [type(o).__name__ for o in outputs] == [ok, bad, ok, bad, bad, ok]
    assert [outputs[i].label for i in (0, 2, 5)] == ["triangle", "square", "triangle"]
    for i in (1, 3, 4):
        error = outputs[i]
        assert isinstance(error, InferenceError)
        assert error.status_code == 422
        assert error.detail.startswith("image: cannot decode upload.png: "), error.detail
    assert "not a PNG, JPEG, WebP, GIF or BMP image" in outputs[1].detail
    assert "truncated" in outputs[3].detail


def test_the_service_answers_a_failed_item_with_422(example: ModuleType, model: Any) -> None:
    """What `process_request` makes of the outputs: the bad item a `Failure` with status 422, the others outputs."""
    from modalkit.app_loader import user_class
    from modalkit.outcome import Failure, http_status

    cls = user_class(example.Classifier)
    service = cls.__new__(cls)
    service._model = model  # as load_artefacts leaves it
    good, bad = item(example, example.sample_png("stripes", seed=5)), item(example, b"GIF89a nonsense")
    results = service._process([good, bad, good])
    assert [type(r).__name__ for r in results] == ["ImageOut", "Failure", "ImageOut"]
    assert isinstance(results[1], Failure)
    assert http_status(results[1]) == 422
    assert results[1].detail.startswith("image: cannot decode")


def test_a_huge_image_is_refused_before_decoding(
    example: ModuleType, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example, "MAX_PIXELS", 50 * 50)
    [out] = model.run([item(example, encoded(drawn("circle", size=96)))])
    assert isinstance(out, InferenceError)
    assert out.status_code == 422
    assert "96x96" in out.detail


def test_the_input_model_takes_uploads(example: ModuleType) -> None:
    from modalkit.files import file_fields

    [field] = file_fields(example.ImageIn).values()
    assert field.name == "image" and field.as_file and field.required
    assert field.max_bytes == 10_000_000
    assert field.accepts("image/png", []) and field.accepts("image/jpeg", []) and not field.accepts("text/plain", [])


def test_the_modal_app_builds_with_the_yaml_settings(example: ModuleType) -> None:
    from tests.modal_introspect import autoscaler

    service_fn = example.Classifier._get_class_service_function()
    info = service_fn.info()
    assert info.gpus == []
    assert (info.batching_info.max_batch_size, info.batching_info.wait_ms) == (32, 10)
    assert info.method_names == ["process_request"]
    scaling = autoscaler(service_fn)
    assert (scaling.min_containers, scaling.max_containers) == (0, 1)
    assert example.app.name == "image-classifier"
    assert example.Classifier._get_user_cls().default_model_name() == "shapes"
