"""ONNX export and the torch-free encoder: parity with PyTorch/colpali-engine on the same weights."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import QUERIES
from PIL import Image

from sapindex import families, sap
from sapindex.errors import SapIndexError
from sapindex.exporter.export import ExportConfig, export_bundle
from sapindex.exporter.graphs import Tolerance, graph_spec
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages
from sapindex.runtime.encoder import Encoder, prune
from sapindex.runtime.options import check_position_correction

FAMILIES = ["colqwen2", "colqwen2_5", "jina_v4", "colpali", "colpali_hf", "colidefics3"]
PREFIX_LM = {"colpali", "colpali_hf"}  # one fixed 8x8 grid (112 px pages), bidirectional image block
TILED = {"colidefics3"}  # tiles + global tile: spatial order != sequence order
# the text graph's family-specific last input (Idefics3 has none: its ids carry the tiling)
LAST_TEXT_INPUT = {"colpali": "prefix_mask", "colpali_hf": "prefix_mask", "colidefics3": "image_embeds"}
RATIOS = (0.05, 0.1, 0.2)


def _pages(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for h, w in sizes]


ALIGNED = [(224, 168), (196, 252), (112, 420)]  # multiples of 28 within the pixel budget: no resampling
ODD = [(200, 150), (330, 300), (120, 421), (97, 233)]


def _aligned(family):
    """Pages the processor does not resample: ColPali squashes every page to 112x112; Idefics3
    pages of longest side 192 and multiples of the 64 px tile are cut as they are (only their
    global tile is resampled)."""
    if family in TILED:
        return [(192, 128), (128, 192), (192, 192)]
    return [(112, 112)] * 3 if family in PREFIX_LM else ALIGNED


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_and_validation(bundles, family):
    manifest, path = bundles[family]
    bundle = Bundle.open(path)  # re-hashes every file
    assert bundle.fingerprint == manifest["fingerprint"]
    calib = json.loads((path / "calibration.json").read_text())
    assert manifest["window"] == [calib["window"]["start"], calib["window"]["end"]]
    assert manifest["family"] == family and manifest["dim"] == 128 and manifest["format_version"] == 2
    assert manifest["attention"] == ("prefix-lm" if family in PREFIX_LM else "causal") == bundle.attention
    assert set(manifest["graphs"]) == {"vision", "head", "tail"}  # the text decoder split at the window's end
    assert manifest["graphs"]["head"]["inputs"][-1] == LAST_TEXT_INPUT.get(family, "image_grid_thw")
    has_tail_layers = manifest["window"][1] < manifest["n_layers"]
    assert ("eos_attention" in manifest["graphs"]["tail"]["outputs"]) == has_tail_layers
    assert manifest["source_model"]["fingerprint"] == calib["model"]["fingerprint"]["sha256"]
    v = manifest["validation"]
    assert v["max_abs_diff_embeddings"] < 1e-4 and v["max_abs_diff_query_embeddings"] < 1e-4
    assert sorted(v["batch_sizes"]) == [1, 4] and not v["kept_set_mismatches"]
    if family in PREFIX_LM:  # fixed resolution: every validation page is the same grid
        assert v["visual_grids"] == [[8, 8]]
    else:
        assert len(v["visual_grids"]) >= 3
    if family in TILED:  # local page grids of 3x3, 2x3 and 3x1 tiles of 4x4 tokens
        assert v["visual_grids"] == [[8, 12], [12, 4], [12, 12]]
        assert "global tile" in manifest["image_token_scheme"] and manifest["preprocessing"]["image_seq_len"] == 16
    expected_files = {"vision.onnx", "vision.onnx.data", "head.onnx", "head.onnx.data", "tail.onnx", "tail.onnx.data",
                      "tokenizer.json"}
    assert expected_files <= set(manifest["files"])
    for name in ("vision.onnx", "head.onnx", "tail.onnx"):
        graph = onnx.load(str(path / name), load_external_data=False).graph
        for tensor in graph.input:
            first = tensor.type.tensor_type.shape.dim[0]
            assert first.dim_param and not first.dim_value, f"{name}:{tensor.name} batch dim is static"
            if family in TILED and tensor.name == "pixel_values":  # [B, N, 3, M, M]: the tile count varies
                dims = tensor.type.tensor_type.shape.dim
                assert dims[1].dim_param and [d.dim_value for d in dims[2:]] == [3, 64, 64]


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_parity_on_identical_inputs(bundles, adapters, family):
    """Same processor tensors into ORT and PyTorch: embeddings and centrality to float rounding."""
    bundle = Bundle.open(bundles[family][1])
    encoder = Encoder(bundle)
    adapter = adapters[family]
    for sizes in (ODD[:1], ODD):  # batch sizes 1 and 4, mixed page sizes
        images = _pages(sizes, seed=len(sizes))
        inputs = adapter.page_inputs(images)
        feed = {k: v.numpy() for k, v in adapter.graph_inputs(inputs).items()}  # + prefix_mask for ColPali
        emb, cent, eos = encoder.sessions.run_pages(feed)
        ref = adapter.encode_pages(images, layers=tuple(range(*bundle.window)))
        visual = adapter.visual_mask(inputs).numpy()
        for b, page in enumerate(ref):
            np.testing.assert_allclose(emb[b][visual[b]], page.embeddings, atol=1e-5)
            np.testing.assert_allclose(cent[b][visual[b]], page.centrality.mean(axis=0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(eos[b][visual[b]], page.eos, rtol=1e-5, atol=1e-6)
            for ratio in RATIOS:
                assert np.array_equal(sap.top_k(cent[b][visual[b]], ratio),
                                      sap.top_k(page.centrality.mean(axis=0), ratio))


def _pil_backend(adapter, request, monkeypatch):
    """Idefics3 resamples every page's global tile: give the reference transformers' PIL backend
    (horizontal-first, which the runtime is bit-identical to) instead of torchvision."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    request.getfixturevalue("pil_resize_horizontal_first")
    pil = Idefics3ImageProcessorPil(**adapter.processor.image_processor.to_dict())
    monkeypatch.setattr(adapter.processor, "image_processor", pil)


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_end_to_end_parity(bundles, adapters, family, request, monkeypatch):
    """numpy preprocessing + ORT vs colpali-engine processor + PyTorch, from PIL images.

    The runtime returns pages in spatial order (``page.layout``), the torch side in sequence
    order: references are mapped with the layout (the identity for grid families), and the
    kept sets are compared as sets of spatial positions of the tokens torch would keep.
    """
    encoder = Encoder(Bundle.open(bundles[family][1]))
    adapter = adapters[family]
    window = tuple(range(*encoder.bundle.window))
    images = _pages(_aligned(family))
    if family in TILED:
        _pil_backend(adapter, request, monkeypatch)
    for page, ref in zip(encoder.encode_pages(images), adapter.encode_pages(images, layers=window), strict=True):
        layout = page.layout
        assert page.grid == ref.grid and layout.n_tokens == page.n_visual == len(ref.embeddings)
        assert (layout.global_grid is not None) == (family in TILED)
        np.testing.assert_allclose(page.embeddings, layout.to_spatial(ref.embeddings, axis=0), atol=1e-4)
        ref_cent = ref.centrality.mean(axis=0)  # sequence order

        def kept_by_torch(scores, ratio, layout=layout):
            return np.sort(layout.spatial_index[sap.top_k(scores, ratio)])

        for ratio in RATIOS:
            assert np.array_equal(prune(page, ratio).positions, kept_by_torch(ref_cent, ratio))
            if family in PREFIX_LM:
                continue  # no causal bias to correct: refused below
            corrected = prune(page, ratio, position_correction=True).positions
            assert np.array_equal(corrected, kept_by_torch(sap.causal_correction(ref_cent), ratio))  # sequence order
    if family in PREFIX_LM:
        with pytest.raises(SapIndexError, match="prefix-lm"):
            check_position_correction(encoder.bundle)
    monkeypatch.undo()  # back to the processor's own (torchvision) backend
    # resampled pages: PIL vs torchvision bicubic differ by <= 1 uint8 level (Idefics3's three
    # chained Lanczos passes: 2); the effect stays small
    images = _pages(ODD)
    for page, ref in zip(encoder.encode_pages(images), adapter.encode_pages(images, layers=window), strict=True):
        assert page.grid == ref.grid
        assert np.abs(page.embeddings - page.layout.to_spatial(ref.embeddings, axis=0)).max() < 5e-3
    queries = ["what was the total revenue in 2023", "chart"]
    for mine, ref in zip(encoder.encode_queries(queries), adapter.encode_queries(queries), strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-5)


@pytest.mark.parametrize("family", ["colqwen2", "colpali", "colidefics3"])
def test_vision_graph_sees_one_page_per_call(bundles, family):
    """A batch of differently sized pages runs the vision graph once per page (its attention memory
    is quadratic in a page's patches) and gives what each page encoded alone gives."""
    encoder = Encoder(Bundle.open(bundles[family][1]))
    vision, seen = encoder.sessions.vision, []
    run = vision.run

    def recording(names, feed):
        seen.append({len(v) for v in feed.values()})
        return run(names, feed)

    vision.run = recording
    images = _pages(ODD)
    batched = encoder.encode_pages(images)
    assert seen == [{1}] * len(images)
    for page, image in zip(batched, images, strict=True):
        (alone,) = encoder.encode_pages([image])
        np.testing.assert_allclose(page.embeddings, alone.embeddings, atol=1e-5)
        np.testing.assert_allclose(page.centrality, alone.centrality, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_match_colpali_score_multi_vector(bundles, adapters, family):
    encoder = Encoder(Bundle.open(bundles[family][1]))
    pages = [prune(p, 0.1) for p in encoder.encode_pages(_pages(_aligned(family)))]
    queries = encoder.encode_queries(["revenue total", "north river map"])
    ours = np.array([[sap.maxsim(q, p.vectors) for p in pages] for q in queries])
    processor = adapters[family].processor  # transformers' ColPaliProcessor calls it score_retrieval
    score = getattr(processor, "score_multi_vector", None) or processor.score_retrieval
    # one pair at a time: colpali pads a batch with zero vectors, which lifts negative maxima to 0
    ref = np.array([[float(score([torch.from_numpy(q)], [torch.from_numpy(p.vectors)])[0, 0]) for p in pages]
                    for q in queries])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_tampered_bundles_are_refused(bundles, tmp_path):
    src = bundles["colqwen2"][1]
    bad = tmp_path / "bad.sap"
    shutil.copytree(src, bad)
    data = bytearray((bad / "head.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (bad / "head.onnx.data").write_bytes(bytes(data))
    with pytest.raises(SapIndexError, match=r"head.onnx.data: sha256 differs"):
        Bundle.open(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SapIndexError, match="bundle format 99 is newer"):
        Bundle.open(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(SapIndexError, match="not a sapindex bundle"):
        Bundle.open(bad)


def test_export_refuses_a_foreign_calibration(tiny_models, calibrations, tmp_path):
    with pytest.raises(SapIndexError, match="calibration was made on another model"):
        export_bundle(ExportConfig(model=str(tiny_models["colqwen2_5"]), calibration=str(calibrations["colqwen2"]),
                                   out=str(tmp_path / "x.sap")))
    assert not (tmp_path / "x.sap").exists()


def test_failed_validation_leaves_no_bundle(tiny_models, calibrations, tmp_path, monkeypatch):
    monkeypatch.setitem(graph_spec("qwen2_vl").tolerances, "fp32", Tolerance(embeddings=-1.0, kept_jaccard=1.0,
                                                                                      kept_jaccard_mean=1.0))
    with pytest.raises(SapIndexError, match=r"export validation failed \(fp32: embeddings\): .* embeddings \d"):
        export_bundle(ExportConfig(model=str(tiny_models["colqwen2"]), calibration=str(calibrations["colqwen2"]),
                                   out=str(tmp_path / "y.sap")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family,n_visual", [("colqwen2", 7 * 9), ("jina_v4", 7 * 9), ("colpali", 64),
                                             ("colpali_hf", 64), ("colidefics3", 9 * 16 + 16)])  # 3x3 tiles + global
def test_encoder_runs_with_torch_and_transformers_blocked(bundles, tmp_path, family, n_visual):
    """The runtime path works in an interpreter where importing torch or transformers fails."""
    image = tmp_path / "page.png"
    _pages([(196, 252)])[0].save(image)
    from helpers import BLOCK_TORCH

    code = BLOCK_TORCH + f"""
from PIL import Image
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.encoder import Encoder, prune
enc = Encoder(Bundle.open({str(bundles[family][1])!r}))
page = prune(enc.encode_pages([Image.open({str(image)!r})])[0], 0.1)
q = enc.encode_queries(['total revenue'])[0]
print(page.vectors.shape[0], page.n_visual, q.shape[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kept, visual, dim = map(int, out.stdout.split())
    assert visual == n_visual and kept == sap.keep_count(n_visual, 0.1) and dim == 128


def test_validation_needs_no_torch_once_the_reference_is_computed(adapters, bundles, tmp_path):
    """Export computes PyTorch's outputs first and frees the model: ONNX Runtime's half of the
    validation runs in an interpreter where torch cannot even be imported."""
    import pickle

    from sapindex.exporter.validate import reference_outputs

    manifest, bundle_dir = bundles["colqwen2"]
    reference = reference_outputs(adapters["colqwen2"], tuple(manifest["window"]))
    (tmp_path / "reference.pkl").write_bytes(pickle.dumps(reference))
    from helpers import BLOCK_TORCH

    code = BLOCK_TORCH + f"""
import pickle
from sapindex.exporter.validate import validate
from sapindex.runtime.bundle import Bundle
reference = pickle.loads(open({str(tmp_path / "reference.pkl")!r}, 'rb').read())
report = validate(reference, Bundle.open({str(bundle_dir)!r}))
print(report['pages'], report['max_abs_diff_embeddings'], len(report['kept_set_mismatches']))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pages, worst, mismatches = out.stdout.split()
    assert int(pages) == 5 and float(worst) <= 1e-4 and int(mismatches) == 0
    assert float(worst) == pytest.approx(manifest["validation"]["max_abs_diff_embeddings"], abs=1e-6)


@pytest.mark.parametrize("family", ["colqwen2", "jina_v4", "colpali", "colidefics3"])
def test_fp16_bundle(tiny_models, calibrations, bundles, tmp_path, family):
    """fp16 weights for the CUDA provider; outputs stay fp32; validated against fp32 PyTorch."""
    manifest = export_bundle(ExportConfig(model=str(tiny_models[family]), calibration=str(calibrations[family]),
                                          out=str(tmp_path / "half.sap"), dtype="fp16"))
    assert manifest["dtype"] == "fp16" and manifest["validation"]["dtype"] == "fp16"
    tolerance = graph_spec(families.FAMILIES[family].backbone).tolerances["fp16"]
    assert manifest["validation"]["max_abs_diff_embeddings"] < tolerance.embeddings
    assert manifest["validation"]["min_kept_jaccard_at_0.1"] >= tolerance.kept_jaccard
    graph = onnx.load(str(tmp_path / "half.sap" / "head.onnx"))
    weights = [t for t in graph.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    # what the runtime reads stays fp32; the states and rotary tables the tail takes are fp16
    fp32 = {o.name for o in graph.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    assert {"centrality", "eos_attention", "attention_bias"} <= fp32
    tail = onnx.load(str(tmp_path / "half.sap" / "tail.onnx"), load_external_data=False)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in tail.graph.output)
    fp32_manifest = bundles[family][0]
    half_bytes = manifest["files"]["head.onnx.data"]["size"]
    assert half_bytes < 0.6 * fp32_manifest["files"]["head.onnx.data"]["size"]
    half = Encoder(Bundle.open(tmp_path / "half.sap"))  # runs on the CPU provider too
    full = Encoder(Bundle.open(bundles[family][1]))
    images = _pages(ALIGNED)
    for a, b in zip(half.encode_pages(images), full.encode_pages(images), strict=True):
        assert a.embeddings.dtype == np.float32
        assert np.abs(a.embeddings - b.embeddings).max() < tolerance.embeddings


def test_overwrite_replaces_only_a_bundle(tiny_models, calibrations, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    cfg = ExportConfig(model=str(tiny_models["colqwen2"]), calibration=str(calibrations["colqwen2"]), out=str(precious))
    with pytest.raises(SapIndexError, match="already exists and is not empty"):
        export_bundle(cfg)
    cfg.overwrite = True
    with pytest.raises(SapIndexError, match="only replaces a sapindex bundle"):
        export_bundle(cfg)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_manifest_graph_io_is_the_source_of_truth(bundles):
    """Old manifests (no ``attention``, graphs without input lists) read as causal with the family's
    graph IO; sessions feed exactly the listed inputs and name a missing one."""
    manifest, path = bundles["colqwen2"]
    old = {k: v for k, v in manifest.items() if k != "attention"}
    old["graphs"] = {name: {"file": graph["file"]} for name, graph in manifest["graphs"].items()}
    bundle = Bundle(path, old)
    assert bundle.attention == "causal"
    assert bundle.graph_io("head")["inputs"] == ["input_ids", "attention_mask", "image_embeds", "image_grid_thw"]
    assert bundle.graph_io("tail")["inputs"] == list(families.TAIL_INPUTS)
    assert Encoder(bundle).encode_queries(["total revenue"])[0].shape[1] == 128
    with pytest.raises(SapIndexError, match="unknown attention 'sliding'"):
        _ = Bundle(path, {**manifest, "attention": "sliding"}).attention
    encoder = Encoder(Bundle.open(bundles["colpali"][1]))
    batch = encoder.preprocessor.pages(_pages([(112, 112)]))
    del batch["prefix_mask"]
    with pytest.raises(SapIndexError, match=r"head.onnx: no value for graph input\(s\) prefix_mask"):
        encoder.sessions.run_pages(batch)


def test_window_override_is_exported_validated_and_recorded(tiny_models, calibrations, bundles, tmp_path):
    """``--window`` exports other layers than the calibrated ones: the manifest says which and from
    where, ONNX keeps the tokens PyTorch keeps on those layers, and the calibrated bundle differs."""
    from helpers import run_cli

    calibrated = bundles["colqwen2"][0]["window"]
    override = [0, 2] if calibrated != [0, 2] else [1, 3]
    out = run_cli("export", "--model", tiny_models["colqwen2"], "--calibration", calibrations["colqwen2"],
                  "--out", tmp_path / "w.sap", "--window", f"{override[0]}:{override[1]}")
    assert out.returncode == 0, out.stderr
    assert f"window     layers [{override[0]}, {override[1]}) of 6 (from --window)" in out.stdout
    words = {"loading", "exporting", "tracing", "validating", "sealing"}  # a line as each long step starts
    steps = [line.split()[0] for line in out.stderr.splitlines() if line.split() and line.split()[0] in words]
    # validating: the step, then PyTorch's two page batches and queries, then ONNX Runtime's
    validating = ["validating"] * 4
    tracing = ["tracing"] * 3  # vision, head, tail
    assert steps == ["loading", *validating, "exporting", *tracing, *validating, "sealing"], out.stderr
    bundle = Bundle.open(tmp_path / "w.sap")
    assert bundle.manifest["window"] == override and bundle.summary()["window_source"] == "--window"
    assert bundle.manifest["calibration"]["window"]["start"] == calibrated[0]  # the calibration is kept as it was
    assert not bundle.manifest["validation"]["kept_set_mismatches"]
    images = _pages(ALIGNED)
    mine = Encoder(bundle).encode_pages(images)
    theirs = Encoder(Bundle.open(bundles["colqwen2"][1])).encode_pages(images)
    assert any(not np.allclose(a.centrality, b.centrality) for a, b in zip(mine, theirs, strict=True))
    assert Bundle.open(bundles["colqwen2"][1]).summary()["window_source"] == "calibration"


@pytest.mark.parametrize("text,message", [
    ("3", "--window 3: write it as START:END, e.g. 1:3 (layers 1 and 2)"),
    ("a:b", "--window a:b: write it as START:END, e.g. 1:3 (layers 1 and 2)"),
    ("2:2", "--window 2:2: need 0 <= START < END <= 6 (the model's layers)"),
    ("4:9", "--window 4:9: need 0 <= START < END <= 6 (the model's layers)"),
])
def test_a_bad_window_is_one_line_and_writes_nothing(tiny_models, calibrations, tmp_path, text, message):
    from helpers import run_cli

    out = run_cli("export", "--model", tiny_models["colqwen2"], "--calibration", calibrations["colqwen2"],
                  "--out", tmp_path / "w.sap", "--window", text)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "w.sap").exists()


@pytest.fixture(scope="module")
def format_1_micro(tmp_path_factory):
    """The built-in micro checkpoint exported in bundle format 1 (one text graph), as bundles were before
    format 2; the shipped bundle is format 2 and replaces the format-1 bundle shipped before it."""
    out = tmp_path_factory.mktemp("v1") / "micro-v1.sap"
    weights = default_weights_path()
    export_bundle(ExportConfig(model=str(weights), calibration=str(weights / "calibration.json"), out=str(out),
                               bundle_format=1))
    return out


def test_format_2_head_and_tail_equal_the_format_1_text_graph(format_1_micro):
    """Exact mode, and format-1 bundles still load and run: the micro checkpoint exported in format 1 (one
    text graph) and the shipped format-2 bundle (head through the SAP window, then the tail on every
    token) give the same embeddings (1e-5), centrality, EOS rows and kept sets on the example pages and
    queries."""
    old, new = Encoder(Bundle.open(format_1_micro)), Encoder(Bundle.open(default_bundle_path()))
    assert (old.bundle.version, new.bundle.version) == (1, 2) and old.bundle.window == new.bundle.window
    assert set(old.bundle.manifest["graphs"]) == {"vision", "text"}
    assert set(new.bundle.manifest["graphs"]) == {"vision", "head", "tail"}
    pages = [Image.open(p).convert("RGB") for p in example_pages()[:4]]
    for a, b in zip(old.encode_pages(pages), new.encode_pages(pages), strict=True):
        assert np.abs(a.embeddings - b.embeddings).max() <= 1e-5
        assert np.allclose(a.centrality, b.centrality, rtol=1e-5, atol=1e-7)
        assert np.allclose(a.eos, b.eos, rtol=1e-5, atol=1e-7)
        for ratio in (0.05, 0.1, 0.2):
            assert np.array_equal(prune(a, ratio).positions, prune(b, ratio).positions)
    for qa, qb in zip(old.encode_queries(QUERIES), new.encode_queries(QUERIES), strict=True):
        assert qa.shape == qb.shape and np.abs(qa - qb).max() <= 1e-5
    assert new.sessions.loaded() == ["head", "tail", "vision"] and old.sessions.loaded() == ["text", "vision"]


def test_an_index_of_a_replaced_bundle_goes_on_with_its_replacement(format_1_micro, tmp_path):
    """``export --replaces``: an index built with the format-1 bundle is resumed and searched with the
    format-2 re-export that replaces it; a bundle that replaces nothing is still refused."""
    from helpers import run_cli

    from sapindex.search import Searcher

    weights = default_weights_path()
    new = tmp_path / "v2.sap"
    out = run_cli("export", "--model", weights, "--calibration", weights / "calibration.json", "--out", new,
                  "--replaces", format_1_micro)
    assert out.returncode == 0, out.stderr
    assert "replaces" in out.stdout
    old_fp = Bundle.open(format_1_micro).fingerprint
    replacement = Bundle.open(new)
    assert replacement.fingerprints == (replacement.fingerprint, old_fp)
    record = replacement.manifest["replaces"][0]
    assert record["format_version"] == 1 and record["max_abs_diff_embeddings"] <= 1e-5
    pages = [str(p) for p in example_pages()[:4]]
    assert run_cli("index", format_1_micro, *pages[:2], "--out", tmp_path / "idx").returncode == 0
    resumed = run_cli("index", new, *pages, "--out", tmp_path / "idx", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["pages_indexed"] == 2
    with Searcher.open(tmp_path / "idx", bundle=new) as searcher:
        assert len(searcher.search("annual report", k=4)) == 4
    refused = run_cli("index", default_bundle_path(), *pages, "--out", tmp_path / "idx")
    assert refused.returncode == 2 and "bundle fingerprint" in refused.stderr  # the shipped one replaces another


def test_replaces_refuses_another_model_or_window(tmp_path):
    """Only a re-export of the same weights and window may replace a bundle: checked before encoding."""
    from sapindex.exporter.validate import replacement_record

    shipped = Bundle.open(default_bundle_path())
    other = Bundle(tmp_path, {**shipped.manifest, "window": [1, 3]})
    with pytest.raises(SapIndexError, match="differs from this export in window"):
        replacement_record(shipped, other, reference=None)
