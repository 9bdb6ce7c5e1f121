"""jina-embeddings-v4 read from its files without its remote code: detection, LoRA merge, prompts, parity.

The reference is computed directly from the checkpoint's files: transformers' plain
``Qwen2_5_VLModel`` with the base weights, the ``retrieval`` LoRA applied on the fly by forward
hooks (``x -> base(x) + scaling * B(A(x))``, jina's ``MultiAdapterLinear``), and the projector,
L2 norm and mask of jina's ``get_multi_vector_embeddings``; sapindex's merged ColQwen2.5 must
match it.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from sapindex.cli.main import cli
from sapindex.errors import SapIndexError
from sapindex.families import inspect_model_dir
from sapindex.models.adapters import load_adapter
from sapindex.models.jina_v4 import PAGE_PROMPT, load_jina_v4
from sapindex.testing.tiny_jina import build_tiny_jina


def _pages():
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for h, w in
            [(200, 150), (330, 300), (120, 420)]]


QUERIES = ["what was the total revenue", "chart of ünïcode costs"]


@pytest.fixture(scope="module")
def jina(tiny_models):
    return tiny_models["jina_v4"]


@pytest.fixture(scope="module")
def jina_adapter(adapters):
    return adapters["jina_v4"]


def _reference(path, inputs, task="retrieval"):
    """Multi-vector output of jina's forward, computed from the files with unmerged LoRA."""
    from transformers import Qwen2_5_VLModel

    from sapindex.models.jina_v4 import backbone_config

    raw_config = json.loads((path / "config.json").read_text())
    config = backbone_config(raw_config)
    config._attn_implementation = "eager"
    model = Qwen2_5_VLModel(config).eval()
    weights = load_file(str(path / "model.safetensors"))
    base = {}
    for key, value in weights.items():  # the tiny checkpoint's "new" layout, spelled out here
        if key.startswith("model.visual."):
            base["visual." + key[len("model.visual."):]] = value
        elif key.startswith("model.language_model."):
            base["language_model." + key[len("model.language_model."):]] = value
    missing, unexpected = model.load_state_dict(base, strict=True)
    assert not unexpected and all(k.endswith("inv_freq") for k in missing)
    projector = torch.nn.Linear(weights["multi_vector_projector.weight"].shape[1], 128)
    projector.load_state_dict({"weight": weights["multi_vector_projector.weight"],
                               "bias": weights["multi_vector_projector.bias"]})
    adapter_cfg = json.loads((path / "adapters" / "adapter_config.json").read_text())
    scaling = adapter_cfg["lora_alpha"] / adapter_cfg["r"]
    lora = load_file(str(path / "adapters" / "adapter_model.safetensors"))
    modules = {"multi_vector_projector": projector}
    modules.update({"model." + name: m for name, m in model.named_modules()})
    hooks = []
    for key in lora:
        if f".lora_A.{task}." not in key:
            continue
        name = key[len("base_model.model."):].split(".lora_A.")[0]
        a, b = lora[key], lora[key.replace(".lora_A.", ".lora_B.")]
        hooks.append(modules[name].register_forward_hook(
            lambda _m, args, out, a=a, b=b: out + scaling * (args[0] @ a.T) @ b.T))
    assert len(hooks) == 8 * 7 + 1  # q/k/v/o/gate/up/down of 8 layers + the projector
    try:
        with torch.no_grad():
            kwargs = dict(inputs)
            if "pixel_values" in kwargs:  # colpali pads pixel_values per image; the model wants them concatenated
                n = (kwargs["image_grid_thw"][:, 1] * kwargs["image_grid_thw"][:, 2]).tolist()
                kwargs["pixel_values"] = torch.cat([pv[:k] for pv, k in zip(kwargs["pixel_values"], n, strict=True)])
            hidden = model(**kwargs, use_cache=False).last_hidden_state  # [B, S, hidden]
            emb = torch.nn.functional.normalize(projector(hidden), dim=-1)  # [B, S, 128]
            return emb * inputs["attention_mask"].unsqueeze(-1)
    finally:
        for hook in hooks:
            hook.remove()


def test_detected_as_jina_not_colqwen2_5(jina, tmp_path):
    info = inspect_model_dir(jina)
    assert info.family.name == "jina_v4" and info.n_layers == 8
    assert any(f["name"].startswith("adapters/") for f in info.fingerprint["files"])  # the LoRA is fingerprinted
    broken = tmp_path / "no-adapters"
    shutil.copytree(jina, broken)
    shutil.rmtree(broken / "adapters")
    with pytest.raises(SapIndexError, match="adapters/adapter_config.json"):
        inspect_model_dir(broken)


def test_page_and_query_vectors_match_direct_computation(jina, jina_adapter):
    adapter = jina_adapter
    pages = _pages()
    inputs = adapter.page_inputs(pages)
    ref = _reference(jina, inputs)
    visual = adapter.visual_mask(inputs)
    for b, page in enumerate(adapter.encode_pages(pages)):
        np.testing.assert_allclose(page.embeddings, ref[b][visual[b]].numpy(), atol=2e-5)
    q_inputs = adapter.query_inputs(QUERIES)
    q_ref = _reference(jina, q_inputs)
    mask = q_inputs["attention_mask"].bool()
    for i, vectors in enumerate(adapter.encode_queries(QUERIES)):
        np.testing.assert_allclose(vectors, q_ref[i][mask[i]].numpy(), atol=2e-5)
    assert "modeling_jina_embeddings_v4" not in sys.modules  # the checkpoint's own code never ran


def test_the_task_adapter_matters(jina, jina_adapter):
    code = load_jina_v4(jina, task="code")
    inputs = jina_adapter.query_inputs(QUERIES)
    with torch.no_grad():
        a, b = jina_adapter.model(**inputs), code(**inputs)
    assert (a - b).abs().max() > 1e-2
    with pytest.raises(SapIndexError, match="no LoRA weights for task 'summarize'"):
        load_jina_v4(jina, task="summarize")


@pytest.mark.parametrize("config_layout,key_layout", [("flat", "legacy"), ("nested", "legacy"), ("flat", "new")])
def test_checkpoint_layouts_give_the_same_vectors(jina_adapter, tmp_path, config_layout, key_layout):
    other = load_adapter(build_tiny_jina(tmp_path / "other", config_layout, key_layout))
    assert other.info.family.name == "jina_v4"
    queries = other.encode_queries(QUERIES)
    for ours, theirs in zip(jina_adapter.encode_queries(QUERIES), queries, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_jina_prompts(jina_adapter):
    proc = jina_adapter.processor
    tok = proc.tokenizer
    page_ids = proc.process_images(_pages()[:1])["input_ids"][0]
    assert tok.decode(page_ids).replace("<|image_pad|>", "") == PAGE_PROMPT.replace("<|image_pad|>", "")
    q = proc.process_queries(["hello world"])
    assert tok.decode(q["input_ids"][0]) == "Query: hello world"  # no augmentation tokens


def test_runtime_preprocessing_matches_the_jina_processor(jina_adapter, tmp_path):
    """The torch-free Qwen2-VL preprocessor, fed the params and tokenizer the exporter extracts
    from jina's processor, builds the same ids and masks for pages and queries."""
    from sapindex.exporter.preprocessing_params import qwen2_vl_params, write_tokenizer_json
    from sapindex.runtime.preprocess.qwen2_vl import Qwen2VLParams, Qwen2VLPreprocessor

    proc = jina_adapter.processor
    runtime = Qwen2VLPreprocessor(Qwen2VLParams.from_dict(qwen2_vl_params(proc)),
                                  write_tokenizer_json(proc, tmp_path / "tokenizer.json"))
    pages = _pages()
    ref, got = proc.process_images(pages), runtime.pages(pages)
    for key in ("input_ids", "attention_mask", "image_grid_thw"):
        np.testing.assert_array_equal(got[key], ref[key].numpy(), err_msg=key)
    ref, got = proc.process_queries(QUERIES), runtime.queries(QUERIES)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(got[key], ref[key].numpy(), err_msg=key)


def test_unknown_weights_and_adapters_are_refused(jina, tmp_path):
    bad = tmp_path / "bad-weights"
    shutil.copytree(jina, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["model.mystery.weight"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(SapIndexError, match="do not match a jina-embeddings-v4 layout"):
        load_jina_v4(bad)
    bad = tmp_path / "bad-adapter"
    shutil.copytree(jina, bad)
    lora = load_file(str(bad / "adapters" / "adapter_model.safetensors"))
    lora["base_model.model.model.nowhere.lora_A.retrieval.weight"] = torch.zeros(4, 64)
    lora["base_model.model.model.nowhere.lora_B.retrieval.weight"] = torch.zeros(64, 4)
    save_file(lora, str(bad / "adapters" / "adapter_model.safetensors"))
    with pytest.raises(SapIndexError, match="match no Linear layer"):
        load_jina_v4(bad)


def test_bundle_carries_jina_preprocessing(bundles):
    manifest, _path = bundles["jina_v4"]
    pre = manifest["preprocessing"]
    assert manifest["family"] == "jina_v4" and manifest["model_type"] == "qwen2_5_vl"
    assert pre["visual_prompt"] == PAGE_PROMPT and pre["query_prefix"] == "Query: " and pre["n_augmentation"] == 0


def test_index_and_search_with_a_jina_bundle(bundles, jina_adapter, tmp_path):
    """The torch-free path: pages indexed with the jina bundle, a query scored like numpy MaxSim on torch vectors."""
    _manifest, bundle = bundles["jina_v4"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, page in enumerate(_pages()):
        page.save(docs / f"p{i}.png")
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(bundle), str(docs), "--out", str(tmp_path / "idx"),
                                 "--keep-ratio", "1.0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["search", str(tmp_path / "idx"), QUERIES[0], "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    q = jina_adapter.encode_queries(QUERIES[:1])[0]
    pages = {f"p{i}.png": enc.embeddings for i, enc in enumerate(jina_adapter.encode_pages(_pages()))}
    for hit in hits:
        name = hit["path"].rsplit("/", 1)[-1]
        expected = float((q @ pages[name].T).max(axis=1).sum())
        assert hit["score"] == pytest.approx(expected, abs=2e-2)  # float16 index vectors
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
