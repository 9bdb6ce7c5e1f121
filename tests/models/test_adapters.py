"""Offline loading: family detection, LoRA checkpoints, refusal of anything that would need a hub."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.families import inspect_model_dir
from sapindex.models.adapters import load_adapter


def _page():
    return Image.fromarray(np.random.default_rng(5).integers(0, 255, size=(240, 200, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def lora_dir(tiny_models, tmp_path_factory):
    """A LoRA adapter over the tiny ColQwen2 (non-zero B so merging changes the model), saved the peft way."""
    from peft import LoraConfig, get_peft_model

    from sapindex.families import inspect_model_dir as inspect
    from sapindex.models.loading import load_colpali

    base = tiny_models["colqwen2"]
    import colpali_engine.models as cm

    model = load_colpali(inspect(base), cm.ColQwen2, torch.device("cpu"), torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(base / name, out / name)
    merged = peft_model.merge_and_unload()
    return out, merged


def _set_base(adapter_dir, value):
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = value
    cfg_path.write_text(json.dumps(cfg))


def test_info_reads_the_checkpoint_without_loading(tiny_models):
    info = inspect_model_dir(tiny_models["colqwen2_5"])
    summary = info.summary()
    assert summary["family"] == "colqwen2_5" and summary["n_layers"] == 8 and summary["n_heads"] == 4
    from safetensors import safe_open

    with safe_open(str(tiny_models["colqwen2_5"] / "model.safetensors"), "pt") as fh:
        expected = sum(fh.get_slice(k).get_shape().numel() if hasattr(fh.get_slice(k).get_shape(), "numel")
                       else int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())  # noqa: SIM118 (safe_open has keys(), no iteration)
    assert summary["parameters"] == expected


@pytest.mark.parametrize("family,model_type", [("colpali", "paligemma"), ("colpali_hf", "colpali")])
def test_info_reads_colpali_checkpoints(tiny_models, family, model_type):
    """Both ColPali flavours are detected from config.json alone; the -hf one keeps its decoder
    config under vlm_config.text_config."""
    summary = inspect_model_dir(tiny_models[family]).summary()
    assert (summary["family"], summary["model_type"], summary["attention"]) == (family, model_type, "prefix-lm")
    assert (summary["n_layers"], summary["n_heads"], summary["n_kv_heads"], summary["hidden_size"]) == (6, 4, 1, 64)
    assert "1024 image tokens" in summary["image_token_scheme"] and "prefix-LM" in summary["image_token_scheme"]
    assert type(load_adapter(tiny_models[family])).__name__ == "PaliGemmaAdapter"


def test_info_reads_a_colidefics3_checkpoint(tiny_models):
    """ColSmol (model_type idefics3) is detected from config.json alone: causal, tiles + global tile."""
    summary = inspect_model_dir(tiny_models["colidefics3"]).summary()
    assert (summary["family"], summary["model_type"], summary["attention"]) == ("colidefics3", "idefics3", "causal")
    assert (summary["n_layers"], summary["n_heads"], summary["n_kv_heads"], summary["hidden_size"]) == (6, 4, 2, 64)
    scheme = summary["image_token_scheme"]
    assert "global tile" in scheme and "64 per 512 px tile" in scheme and "global tile last" in scheme
    assert type(load_adapter(tiny_models["colidefics3"])).__name__ == "Idefics3Adapter"


def test_colpali_hf_without_decoder_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "colpali", "vlm_config": {"text_config": {}}}))
    with pytest.raises(SapIndexError, match=r"config.json: missing or invalid text config field 'num_hidden_layers'"):
        inspect_model_dir(tmp_path)


def test_lora_with_hub_base_is_refused(lora_dir, tmp_path):
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(lora_dir[0], adapter_dir)
    _set_base(adapter_dir, "vidore/colqwen2-base")
    with pytest.raises(SapIndexError,
                       match=r"base model is not a local checkpoint.*vidore/colqwen2-base.*--base-model"):
        load_adapter(adapter_dir)


def test_lora_with_local_base_merges(lora_dir, tiny_models, tmp_path):
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(lora_dir[0], adapter_dir)
    _set_base(adapter_dir, "vidore/colqwen2-base")
    adapter = load_adapter(adapter_dir, base_model=tiny_models["colqwen2"])
    assert adapter.info.is_lora and "base" in adapter.info.fingerprint
    page = adapter.encode_pages([_page()])[0]
    merged = lora_dir[1]
    inputs = adapter.page_inputs([_page()])
    with torch.no_grad():
        ref = merged(**inputs)[0][adapter.visual_mask(inputs)[0]].numpy()
    np.testing.assert_allclose(page.embeddings, ref, atol=1e-5)
    plain = load_adapter(tiny_models["colqwen2"]).encode_pages([_page()])[0]
    assert np.abs(plain.embeddings - page.embeddings).max() > 1e-3, "the adapter must change the model"


def test_lora_that_does_not_attach_is_refused(lora_dir, tiny_models, tmp_path):
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(lora_dir[0], adapter_dir)
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    # k_proj is not a LoRA target of the base, so these tensors match no module
    save_file({k.replace("q_proj", "k_proj"): v for k, v in weights.items()}, adapter_dir / "adapter_model.safetensors")
    with pytest.raises(SapIndexError, match="did not attach"):
        load_adapter(adapter_dir, base_model=tiny_models["colqwen2"])


def test_checkpoint_missing_projection_is_refused(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "no-proj"
    shutil.copytree(tiny_models["colqwen2"], broken)
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "custom_text_proj" not in k}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(SapIndexError, match=r"lacks 2 weight\(s\).*custom_text_proj.*randomly initialised"):
        load_adapter(broken)


@pytest.mark.parametrize("config,reason", [
    ({"model_type": "qwen2", "num_hidden_layers": 2}, "text-only model has no visual tokens"),
    ({"model_type": "qwen3_5", "vision_config": {}}, "linear-attention layers"),
    ({"model_type": "smolvlm", "vision_config": {}}, "SmolVLM2 has no colpali-engine retrieval class"),
    ({"model_type": "llava", "vision_config": {}}, "unsupported architecture 'llava'; supported: colqwen2"),
])
def test_unsupported_architectures(tmp_path, config, reason):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SapIndexError, match=reason):
        inspect_model_dir(tmp_path)


def test_missing_and_broken_model_dirs(tmp_path):
    with pytest.raises(SapIndexError, match="does not exist"):
        inspect_model_dir(tmp_path / "nope")
    with pytest.raises(SapIndexError, match=r"config.json: missing"):
        inspect_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(SapIndexError, match=r"config.json: invalid JSON at line 1"):
        inspect_model_dir(tmp_path)


def test_sdpa_attention_is_refused(adapters):
    adapter = adapters["colqwen2"]
    layer_cfg = adapter.decoder_layers()[0].self_attn.config
    saved = layer_cfg._attn_implementation
    try:
        layer_cfg._attn_implementation = "sdpa"
        with pytest.raises(SapIndexError, match="cannot return attention probabilities"):
            adapter.check_eager()
    finally:
        layer_cfg._attn_implementation = saved
