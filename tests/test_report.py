"""The HTML report: every section present, captioned, with decodable images of the expected sizes."""

from __future__ import annotations

import base64
import sys
from html.parser import HTMLParser

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument, MissingDependency
from onnxsight.report import SECTIONS, ReportData, ReportOptions, write_report

# Small counts: the whole report of the trained seed-000 CNN renders in a few seconds.
SMALL = ReportOptions(images=3, predictions=6, feature_images=1, smooth_samples=4, ig_steps=8, saliency_count=10,
                      saliency_classes=2, topk_units=2, k=3, embed_count=60, maximize_steps=10,
                      embed_method="pca", gradcheck_layers=("dense_1",))
TEST_IMAGES = 120


class _Page(HTMLParser):
    """Section ids and captions, table-of-contents links, images, and anything that could reach the network."""

    def __init__(self):
        super().__init__()
        self.sections, self.captions, self.links, self.images, self.scripts, self.urls = [], {}, [], [], 0, []
        self.meta, self._caption, self._cells, self.cells = [], False, False, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "p" and attrs.get("class") == "caption":
            self._caption = True
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append((self.sections[-1], attrs))
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta":
            self.meta.append(attrs)
        elif tag == "td":
            self._cells = True
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if value and not value.startswith(("data:", "#")):
                self.urls.append(value)

    def handle_endtag(self, tag):
        self._caption = self._caption and tag != "p"
        self._cells = self._cells and tag != "td"

    def handle_data(self, data):
        if self._caption:
            self.captions[self.sections[-1]] = self.captions.get(self.sections[-1], "") + data
        if self._cells and self.sections:
            self.cells.setdefault(self.sections[-1], []).append(data)


def _decode(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(src[len(prefix):]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "an embedded PNG does not decode"
    return image


@pytest.fixture(scope="module")
def rendered(model, digits_data, tmp_path_factory):
    data = ReportData(digits_data.x_test[:TEST_IMAGES], digits_data.y_test[:TEST_IMAGES], digits_data.class_names, "digits")
    path = tmp_path_factory.mktemp("report") / "report.html"
    report = write_report(model, data, path, SMALL)
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return report, page, data


def test_every_section_is_present_in_order_with_a_contents_link_and_a_one_sentence_caption(rendered):
    report, page, _ = rendered
    assert page.sections == list(SECTIONS) == report.sections
    assert [link for link in page.links if link.startswith("#")] == [f"#{name}" for name in SECTIONS]
    for name in SECTIONS:
        caption = page.captions[name].strip()
        assert caption.endswith(".") and len(caption) > 40, (name, caption)
    assert set(report.timings) == set(SECTIONS)


def test_the_page_is_self_contained(rendered):
    _, page, _ = rendered
    assert page.scripts == 0 and page.urls == []
    policy = next(m["content"] for m in page.meta if m.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in policy and "img-src data:" in policy


def test_every_embedded_image_decodes_at_its_declared_size(rendered):
    _, page, _ = rendered
    assert len(page.images) >= 12
    for section, attrs in page.images:
        image = _decode(attrs["src"])
        assert image.shape[:2] == (int(attrs["height"]), int(attrs["width"])), section
        assert image.std() > 5, f"{section}: a blank image"


def test_images_have_the_sizes_their_layouts_give(rendered):
    _, page, _ = rendered
    sizes = {}
    for section, attrs in page.images:
        sizes.setdefault(section, []).append(_decode(attrs["src"]).shape[:2])
    rows = SMALL.images
    # matplotlib grids: 1.4 inches per cell plus fixed margins, at 100 dpi
    assert sizes["saliency"] == [(round(100 * (1.4 * rows + 0.35)), round(100 * (1.4 * 5 + 1.3)))]
    assert sizes["gradcam"] == [(round(100 * (1.4 * rows + 0.35)), round(100 * (1.4 * 5 + 1.3)))]
    assert sizes["smoothgrad-ig"] == [(round(100 * (1.4 * rows + 0.35)), round(100 * (1.4 * 3 + 1.3)))]
    assert sizes["occlusion"] == [(round(100 * (1.4 * rows + 0.35)), round(100 * (1.4 * 2 + 1.3)))]
    assert sizes["class-saliency"] == [(500, 500)] * SMALL.saliency_classes
    assert sizes["embedding"] == [(500, 600)]
    assert sizes["accuracy"] == [(570, 610)]  # 10 classes
    # opencv grids: 32 first-layer kernels in 6x6 cells of 48 px (+4 gap, +14 label); 10 maximised classes of 96 px
    assert sizes["filters"] == [(6 * 66 + 4, 6 * 52 + 4)]
    assert sizes["maximization"][0] == (96 + 4 + 14 + 4, 10 * 100 + 4)
    assert sizes["maximization"][1] == (320, 840)
    assert sizes["top-k"] == [((72 + 4 + 14 + 4) + (72 + 4 + 4), SMALL.k * 76 + 4)] * SMALL.topk_units
    assert len(sizes["feature-maps"]) == 2 * SMALL.feature_images  # conv2d_1 and conv2d_2


def test_numbers_in_the_page_match_the_model(rendered, model):
    _, page, data = rendered
    accuracy = float(np.mean(model.predict(data.x).argmax(axis=1) == data.labels))
    assert f"{accuracy:.2%}" in page.captions["accuracy"]
    cells = page.cells["gradcheck"]
    assert cells[0] == "input" and "dense_1" in cells and "FAIL" not in cells


def test_without_labels_the_labelled_sections_are_left_out(model, digits_data, tmp_path):
    options = ReportOptions(images=2, sections=("summary", "accuracy", "class-saliency", "predictions"))
    report = write_report(model, ReportData(digits_data.x_test[:5]), tmp_path / "r.html", options)
    assert report.sections == ["summary", "predictions"]


def test_unknown_sections_and_existing_files_are_refused(model, digits_data, tmp_path):
    data = ReportData(digits_data.x_test[:5], digits_data.y_test[:5])
    with pytest.raises(InvalidArgument, match="unknown report section 'saliencey'"):
        write_report(model, data, tmp_path / "r.html", ReportOptions(sections=("saliencey",)))
    (tmp_path / "r.html").write_text("mine")
    with pytest.raises(InvalidArgument, match="already exists"):
        write_report(model, data, tmp_path / "r.html", ReportOptions(sections=("summary",)))
    assert (tmp_path / "r.html").read_text() == "mine"


def test_missing_matplotlib_names_the_extra(monkeypatch):
    from onnxsight.report import figures

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependency, match=r"onnxsight\[report\]"):
        figures.new_figure(1, 1)


def test_report_command_writes_the_page_and_keeps_it_without_force(mnist_onnx, tmp_path):
    target = tmp_path / "out.html"
    arguments = ["report", str(mnist_onnx), "--data", "digits", "--count", "40", "--section", "summary",
                 "--section", "accuracy", "--device", "cpu", "-o", str(target)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert f"report: {target}" in result.stdout.replace("\n", "")
    assert 'id="accuracy"' in target.read_text() and 'id="saliency"' not in target.read_text()
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_top_k_asks_for_no_more_units_than_the_layer_has():
    """A foreign NCHW model whose pool1 has 4 channels, asked for the default 4+ units."""
    from onnxsight.engine.model import load
    from onnxsight.report.build import build_sections
    from tests.foreign_models import nchw_cnn

    model = load(nchw_cnn(), device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (12, 3, 8, 8)).astype(np.float32)
    sections, _ = build_sections(model, ReportData(x), ReportOptions(sections=("top-k",), topk_units=10, k=3))
    assert len(sections[0].figures) == 4


def test_the_report_of_an_imagenet_sized_model_on_two_photos_is_sized_down(tmp_path):
    """Defaults on a 224×224, 1000-class ResNet with random weights and two images, as a user runs it."""
    import time

    from tests.foreign_models import resnet_like_224

    model = onnxsight.load(resnet_like_224(), device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 224, 224)).astype(np.float32)
    started = time.perf_counter()
    report = write_report(model, ReportData(x, name="photos"), tmp_path / "report.html", ReportOptions(section_seconds=3))
    assert time.perf_counter() - started < 120
    assert report.sections == [name for name, (_, labelled) in SECTIONS.items() if not labelled]
    page = _Page()
    page.feed(report.path.read_text(encoding="utf-8"))
    assert "at least 3 images and this report has 2" in page.captions["embedding"]
    for section in ("occlusion", "top-k"):  # 4/2 and 11/4 windows on 224×224 would take minutes
        assert "Sized down to window" in page.captions[section], section
    assert "of 1000 classes, the samples&#x27;</h2>" in report.path.read_text()  # not all 1000


def test_a_report_of_two_images_leaves_the_embedding_out_and_says_why(tmp_path):
    from tests.test_class_scores import fully_convolutional

    model = onnxsight.load(fully_convolutional(), device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    options = ReportOptions(smooth_samples=4, ig_steps=4, maximize_steps=10, embed_method="pca")
    report = write_report(model, ReportData(x), tmp_path / "report.html", options)
    page = _Page()
    page.feed(report.path.read_text(encoding="utf-8"))
    assert page.captions["embedding"].strip() == ("No map of the features is drawn: a 2-D map needs at least 3 images "
                                                  "and this report has 2.")
    assert "Sized down" not in report.path.read_text()  # a small model does all that is asked
    assert [name for name, (_, labelled) in SECTIONS.items() if not labelled] == report.sections


def test_a_report_on_a_tight_budget_says_what_each_section_left_out(tmp_path):
    from tests.test_class_scores import fully_convolutional

    model = onnxsight.load(fully_convolutional(), device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    options = ReportOptions(section_seconds=1e-9, embed_method="pca")
    report = write_report(model, ReportData(x, labels=np.array([0, 0, 1])), tmp_path / "report.html", options)
    page = _Page()
    page.feed(report.path.read_text(encoding="utf-8"))
    expected = {"smoothgrad-ig": "Sized down to 2 copies and 2 steps", "class-saliency": "Sized down to 2 images per class",
                "embedding": "has no flat layer before its logits (choose one with embed_layer)", "occlusion": "Sized down to window 8, stride 8",
                "maximization": "Sized down to 10 steps (asked: 200)", "gradcheck": "The gradient check is left out",
                "top-k": "Sized down to window 8, stride 8 (asked: 11, 4)"}
    for section, words in expected.items():
        assert words in page.captions[section], (section, page.captions[section])
    assert "finite-difference check is left out" in page.captions["maximization"]
    assert "Left out, with fewer than 2 images: class 1." in page.captions["class-saliency"]


def test_report_command_on_two_image_files_with_a_section_budget(tmp_path):
    from tests.test_class_scores import fully_convolutional

    model, target = tmp_path / "fc.onnx", tmp_path / "out.html"
    onnx.save(fully_convolutional(), model)
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    files = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path, image in zip(files, images):
        np.save(path, image[None])
    result = CliRunner().invoke(app, ["report", str(model), *map(str, files), "--section", "occlusion", "--section",
                                      "embedding", "--section-seconds", "0", "--device", "cpu", "-o", str(target)])
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert "Sized down to window 8, stride 8" in page and "this report has 2." in page


def test_the_gradient_check_keeps_evenly_spaced_layers_that_fit(tmp_path, monkeypatch):
    """Timings fixed at 1 ms per forward pass: the input and one of the two layers fit 30 ms."""
    from onnxsight.report import sections
    from tests.test_class_scores import fully_convolutional

    monkeypatch.setattr(sections, "_seconds_per_image", lambda model, x: 1e-3)
    monkeypatch.setattr(sections.Context, "float64_pass", (1e-3, "onnxruntime"))
    model = onnxsight.load(fully_convolutional(), device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    options = ReportOptions(sections=("gradcheck",), section_seconds=0.03)
    page = _Page()
    page.feed(write_report(model, ReportData(x), tmp_path / "report.html", options).path.read_text(encoding="utf-8"))
    assert "Sized down to 1 of 2 layers, evenly spaced" in page.captions["gradcheck"]
    assert page.cells["gradcheck"][0] == "input" and "conv" in page.cells["gradcheck"]
