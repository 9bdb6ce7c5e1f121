"""The micro retriever's trainer: targets, tokenizer, losses, and a short seeded run (CI smoke)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sapindex.micro.data import CELL, PageSample, word_cells
from sapindex.micro.train import (
    SMOKE,
    TrainConfig,
    _cell_words,
    _learning_rate,
    build_word_tokenizer,
    cross_page_cosine,
    dense_loss,
    maxsim_scores,
    reading_loss,
    train,
)


def test_word_cells_cover_the_ink_box():
    # grid 3 rows x 4 cols of 28 px cells; scale 0.5 maps a 2x-size page onto it
    cells = word_cells([(0, 0, 100, 40), (150, 120, 160, 130)], [7, 9], (0.5, 0.5), (3, 4))
    # box 1 -> (0, 0, 50, 20): cols 0..1 (overlap 28 and 22 px), row 0
    assert cells[7].tolist() == [0, 1]
    # box 2 -> (75, 60, 80, 65): one cell, row 2 col 2
    assert cells[9].tolist() == [2 * 4 + 2]
    # a sliver of overlap does not count, the best cell always does
    sliver = word_cells([(0, 0, 2 * (CELL + 2), 20)], [1], (0.5, 0.5), (3, 4))
    assert sliver[1].tolist() == [0]


def test_word_tokenizer_reads_each_word_as_one_token():
    tok = build_word_tokenizer(["revenue", "table", "values"])
    ids = tok("Revenue table 2023 values.", add_special_tokens=False)["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words == ["revenue", "table", "2", "0", "2", "3", "values", "."]
    assert tok.convert_tokens_to_ids("<|image_pad|>") != tok.unk_token_id
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_losses_reward_the_right_cells():
    torch.manual_seed(0)
    pages = torch.nn.functional.normalize(torch.randn(2, 5, 16), dim=-1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    positives = torch.zeros(2, 10, dtype=torch.bool)
    positives[0, 1], positives[1, 7] = True, True
    right = torch.stack([pages[0, 1], pages[1, 2]])
    wrong = torch.stack([pages[1, 3], pages[0, 0]])
    assert dense_loss(right, pages, mask, positives, 0.05) < dense_loss(wrong, pages, mask, positives, 0.05)
    # the masked token never counts, even when it is the best match
    only_masked = torch.zeros(1, 10, dtype=torch.bool)
    only_masked[0, 9] = True
    assert torch.isinf(dense_loss(pages[1, 4][None], pages, mask, only_masked, 0.05))

    embeddings = torch.eye(6, 16)
    states = torch.zeros(3, 16)
    states[0, 2], states[2, 5] = 5.0, 5.0
    good = reading_loss(states, embeddings, [0, 2], [2, 5])
    bad = reading_loss(states, embeddings, [0, 2], [5, 2])
    assert good < 0.1 < bad


def test_cell_words_number_cells_across_the_batch():
    """The reading loss's targets: cells count on from page to page, as the vision tower concatenates them."""
    first = PageSample(np.zeros((16, 588), np.uint8), (4, 4), {7: np.array([0, 3]), 9: np.array([1])}, ())  # 4 cells
    second = PageSample(np.zeros((8, 588), np.uint8), (2, 4), {7: np.array([1])}, ())  # 2 cells
    cell_index, cell_tokens, word_mask = _cell_words([first, second], torch.ones(2, 4, dtype=torch.bool))
    assert cell_index == [0, 3, 1, 4 + 1] and cell_tokens == [7, 7, 9, 7]
    assert word_mask.tolist() == [[True, True, False, True], [False, True, False, False]]


def test_maxsim_scores_match_a_loop():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(2, 6, 8), dim=-1)
    qm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    dm = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    got = maxsim_scores(q, qm, d, dm)
    for i in range(3):
        for j in range(2):
            t, n_doc = int(qm[i].sum()), int(dm[j].sum())
            want = (q[i, :t] @ d[j, :n_doc].T).max(1).values.mean()
            assert abs(float(got[i, j]) - float(want)) < 1e-5


def test_cross_page_cosine_detects_collapse():
    same = torch.nn.functional.normalize(torch.ones(3, 4, 8), dim=-1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    assert cross_page_cosine(same, mask) == pytest.approx(1.0, abs=1e-5)
    spread = torch.nn.functional.normalize(torch.eye(8)[:6].reshape(3, 2, 8), dim=-1)
    assert cross_page_cosine(spread, torch.ones(3, 2, dtype=torch.bool)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_validation_scores_the_query_words_without_prefix_and_augmentation():
    """The words-only validation number slices each right-padded query to exactly its words."""
    from sapindex.benchdata.render import vocabulary
    from sapindex.micro.train import Batches
    from sapindex.testing.tiny import make_tiny, tiny_spec

    words = vocabulary()
    tokenizer = build_word_tokenizer(words)
    model, processor = make_tiny(tiny_spec("colqwen2"), tokenizer)
    batches = Batches(model, processor)
    texts = [" ".join(words[3:6]), words[10]]
    inputs = batches.queries(texts)
    assert batches.query_suffix_len == 10
    for ids, mask, text in zip(inputs["input_ids"], inputs["attention_mask"], texts, strict=True):
        valid = ids[mask.bool()].tolist()
        kept = valid[batches.query_offset: len(valid) - batches.query_suffix_len]
        assert tokenizer.convert_ids_to_tokens(kept) == text.split()


def test_a_longer_last_stage_leaves_earlier_learning_rates_unchanged():
    """The decay length is fixed, so growing the whole-page stage only adds steps at the floor."""
    shipped = TrainConfig()
    last = shipped.stages[-1]
    longer = replace(shipped, stages=shipped.stages[:-1] + (replace(last, steps=last.steps + 500),))
    rates = [_learning_rate(shipped, s) for s in range(shipped.steps)]
    assert rates == [_learning_rate(longer, s) for s in range(shipped.steps)]
    assert max(rates) == pytest.approx(shipped.lr)
    assert rates[shipped.decay_steps - 1] == pytest.approx(shipped.lr / 10, rel=1e-3)
    assert all(_learning_rate(longer, s) == pytest.approx(shipped.lr / 10)
               for s in range(shipped.decay_steps, longer.steps))
    # without a fixed length the cosine stretches over all steps, as the smoke preset does
    assert _learning_rate(replace(longer, decay_steps=None), shipped.decay_steps) > shipped.lr / 10


@pytest.mark.slow
def test_smoke_training_writes_a_loadable_seeded_checkpoint(tmp_path):
    """CI proof that the script runs: a few steps on a tiny model, twice, same seed -> same weights."""
    from safetensors.numpy import load_file

    from sapindex.models.adapters import load_adapter

    config = replace(SMOKE, threads=1)
    report = train(config, tmp_path / "a", log=lambda m: None)
    train(config, tmp_path / "b", log=lambda m: None)
    assert [h["step"] for h in report["history"]] == [2, 4]
    seconds = [h["seconds"] for h in report["history"]]  # cumulative training time
    assert seconds[0] < seconds[1] <= report["train_seconds"]
    assert all(np.isfinite(h["dense"]) and np.isfinite(h["read"]) for h in report["history"])
    assert all(0 <= h["ndcg5_query_words_only"] <= 1 for h in report["history"])
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["config"]["seed"] == 0 and log["parameters"] == report["parameters"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    adapter = load_adapter(tmp_path / "a")
    encoding = adapter.encode_pages([Image.new("RGB", (200, 300), "white")])[0]
    assert encoding.embeddings.shape[1] == 128


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.numpy import load_file

    config = replace(SMOKE, threads=1)
    train(config, tmp_path / "straight", log=lambda m: None)
    assert train(config, tmp_path / "split", log=lambda m: None, max_steps=2) is None
    assert not (tmp_path / "split" / "model.safetensors").exists()
    report = train(config, tmp_path / "split", log=lambda m: None, resume=True)
    assert [h["step"] for h in report["history"]] == [2, 4]
    seconds = [h["seconds"] for h in report["history"]]  # training time adds up across the two calls
    assert seconds[0] < seconds[1] <= report["train_seconds"]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another configuration"):
        train(replace(config, lr=0.5), tmp_path / "split", log=lambda m: None, resume=True)


def test_pool_pages_keep_one_frame_and_restore_the_processors_pixels():
    from sapindex.models._compat import prepare_torch_side

    prepare_torch_side()
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor

    from sapindex.micro.data import expand_frames, to_uint8

    ip = Qwen2VLImageProcessor(min_pixels=16 * 784, max_pixels=64 * 784)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    pixel_values = ip(images=[image], return_tensors="np")["pixel_values"]  # [P, 1176]
    stored = to_uint8(pixel_values, ip.image_mean, ip.image_std)
    assert stored.shape == (len(pixel_values), 588) and stored.dtype == np.uint8
    channel = np.arange(1176) // 392
    restored = (expand_frames(stored) / 255.0 - np.asarray(ip.image_mean)[channel]) / np.asarray(ip.image_std)[channel]
    assert np.abs(restored - pixel_values).max() < 1e-5
    assert np.array_equal(expand_frames(torch.from_numpy(stored)).numpy(), expand_frames(stored))
