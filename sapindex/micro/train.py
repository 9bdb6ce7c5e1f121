"""Train the micro retriever: a ColQwen2 trained from scratch on rendered pages, on a CPU.

    python -m sapindex.micro.train --out micro-colqwen2 [--seed 0] [--smoke]

Why it is trained this way (the runs behind it: docs/measurements.md, "Micro recipe notes"): plain in-batch ColBERT
contrastive training from random weights collapses (every page token ends up the same vector and
the loss sits at ln(batch)). The renderer knows where every word is drawn, so the main signal is
dense: each word of a page is read through the model's own query path (a pseudo-query of page
words) and must find, among all visual tokens of the batch, the tokens whose cells its ink
covers (an InfoNCE over visual tokens, positives = every cell of every batch page holding that
word). That teaches visual tokens to say which words they show and query tokens to look for
them, which is exactly what MaxSim needs. The in-batch MaxSim contrastive loss on real queries
is ramped in once the dense signal has given the tokens structure. A curriculum starts with
large fonts and a small vocabulary and then moves to the benchmark's settings; the mean cosine
between tokens of different pages is watched, and training stops with an error if it collapses.

Everything is seeded (pages, batches, initial weights); the tokenizer is word-level over the
benchmark vocabulary (digits split), so each query word is one token.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from sapindex.formats import jsonable
from sapindex.micro.data import CHARACTERS, PageSample, Stage, crop, expand_frames, preprocess, render_pool
from sapindex.models._compat import prepare_torch_side
from sapindex.testing.tiny import SPECIAL_TOKENS, TinySpec, make_tiny

__all__ = ["TrainConfig", "SMOKE", "PRESETS", "build_word_tokenizer", "train", "main"]

UNK = "[UNK]"
PUNCTUATION = list(".,;:()[]!?%-/+=*'\"&#$@_<>|{}~^`\\")


@dataclass(frozen=True)
class TrainConfig:
    """The recipe. Defaults are the shipped model's; ``SMOKE`` is a seconds-long variant for CI."""

    seed: int = 0
    # Windows grow before whole pages: a vision tower trained on 8 x 8-token windows alone reads
    # far fewer words on whole pages than in windows, because its attention never spread over a
    # whole page's patches; 16 x 16 windows, then whole pages, close that gap.
    stages: tuple[Stage, ...] = (Stage(vocab_size=300, min_font_px=26, pages=1000, steps=3000, crop=(8, 8)),
                                 Stage(vocab_size=1000, min_font_px=22, pages=1600, steps=4000, crop=(8, 8)),
                                 Stage(vocab_size=1000, min_font_px=22, pages=1600, steps=500, crop=(16, 16),
                                       batch_size=8),
                                 Stage(vocab_size=1000, min_font_px=22, pages=1600, steps=3000, batch_size=4))
    batch_size: int = 16
    words_per_page: int = 48  # dense-loss words drawn per page and step (all of most pages)
    lr: float = 1e-3
    warmup: int = 30
    # The cosine decays to its floor (lr / 10) over this many steps and stays there: validation
    # NDCG@5 still climbs at the floor, and a fixed decay length lets the whole-page stage grow
    # without changing any earlier step. None decays over all steps.
    decay_steps: int | None = 8300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dense_temperature: float = 0.05
    reading_weight: float = 1.0  # the vision tower's per-cell word loss against the token embeddings
    character_weight: float = 1.0  # the vision tower's per-cell character loss (a head dropped after training)
    maxsim_temperature: float = 0.05  # on MaxSim scores averaged over query tokens
    maxsim_ramp: int = 30  # steps over which its weight goes 0 -> 1 once whole pages are trained on
    collapse_cosine: float = 0.98  # mean cross-page cosine of word tokens that counts as collapse...
    collapse_after: float = 0.4  # ...once this fraction of training is done (early on, "text here" is all they say)
    model: TinySpec = field(default_factory=lambda: TinySpec(
        "colqwen2", n_layers=6, hidden=192, heads=4, kv_heads=2, mlp=512, vision_depth=4, vision_width=192,
        vision_heads=4, vision_mlp_ratio=4, min_visual_tokens=16, max_visual_tokens=1024))
    eval_every: int = 500
    val_pages: int = 100
    val_queries: int = 100
    threads: int = 2
    render_workers: int = 2

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)


SMOKE = TrainConfig(
    stages=(Stage(60, 30, 8, 2, crop=(3, 3)), Stage(120, 24, 8, 2)), batch_size=4, words_per_page=4, warmup=1,
    decay_steps=None, eval_every=2,
    val_pages=6, val_queries=6, render_workers=1,
    model=TinySpec("colqwen2", n_layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, vision_depth=1, vision_width=32,
                   vision_heads=2, vision_mlp_ratio=2, min_visual_tokens=4, max_visual_tokens=64))


PRESETS = {"micro": TrainConfig(), "smoke": SMOKE}


def build_word_tokenizer(words: Sequence[str]):
    """A word-level tokenizer: every vocabulary word is one token, digits are split, case folded."""
    prepare_torch_side()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    prompt_words = ["user", "describe", "the", "image", "query"]
    entries = list(SPECIAL_TOKENS) + [UNK] + [str(d) for d in range(10)] + PUNCTUATION
    for w in list(words) + prompt_words:
        if w not in entries:
            entries.append(w)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(entries)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token=UNK, additional_special_tokens=SPECIAL_TOKENS[1:])


class Batches:
    """Model inputs built from :class:`PageSample` s and query texts (right-padded: no empty rows)."""

    def __init__(self, model, processor):
        import torch

        self.torch = torch
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = model.config.image_token_id
        ip = processor.image_processor
        channel = np.arange(1176) // 392  # 1176 = 3 channels x (2 x 14 x 14)
        self.mean = torch.tensor(np.asarray(ip.image_mean)[channel], dtype=torch.float32)
        self.std = torch.tensor(np.asarray(ip.image_std)[channel], dtype=torch.float32)
        prefix = processor.visual_prompt_prefix
        self.prompt_head, self.prompt_tail = prefix.split(processor.image_token)
        self.query_offset = len(self.tokenizer(processor.query_prefix, add_special_tokens=False)["input_ids"])
        self.query_suffix = processor.query_augmentation_token * 10
        self.query_suffix_len = len(self.tokenizer(self.query_suffix, add_special_tokens=False)["input_ids"])

    def pages(self, samples: Sequence[PageSample]) -> tuple[dict, int]:
        """Page inputs and the sequence offset of the first visual token (the same for every page)."""
        torch = self.torch
        texts = [self.prompt_head + self.processor.image_token * s.n_cells + self.prompt_tail for s in samples]
        enc = self.tokenizer(texts, padding="longest", padding_side="right", return_tensors="pt")
        longest = max(len(s.patches) for s in samples)
        pixels = torch.zeros(len(samples), longest, 1176)  # [B, P, 1176], zero-padded like colpali's
        for i, s in enumerate(samples):
            frames = expand_frames(torch.from_numpy(s.patches)).float()
            pixels[i, : len(s.patches)] = (frames / 255.0 - self.mean) / self.std
        ids = enc["input_ids"]
        offset = int((ids[0] == self.image_token_id).nonzero()[0, 0])
        inputs = dict(input_ids=ids, attention_mask=enc["attention_mask"], pixel_values=pixels,
                      image_grid_thw=torch.tensor([[1, *s.grid] for s in samples]),
                      mm_token_type_ids=(ids == self.image_token_id).long())
        return inputs, offset

    def queries(self, texts: Sequence[str]) -> dict:
        texts = [self.processor.query_prefix + t + self.query_suffix for t in texts]
        enc = self.tokenizer(texts, padding="longest", padding_side="right", return_tensors="pt")
        return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


def page_vectors(model, batches: Batches, samples: Sequence[PageSample]):
    """Visual token embeddings ``[B, L, 128]`` (L = most cells in the batch) and their mask ``[B, L]``."""
    torch = batches.torch
    inputs, offset = batches.pages(samples)
    out = model(**inputs)  # [B, S, 128], L2-normalised, zero at padding
    cells = torch.tensor([s.n_cells for s in samples])
    longest = int(cells.max())
    mask = torch.arange(longest)[None, :] < cells[:, None]  # [B, L]
    return out[:, offset: offset + longest].float() * mask[..., None], mask


def dense_loss(word_vecs, page_vecs, page_mask, positives, temperature: float):
    """InfoNCE of each word vector ``[N, 128]`` over every visual token of the batch.

    ``positives`` ``[N, B * L]`` (bool) marks the tokens whose cells hold the word, on any page.
    """
    import torch

    logits = word_vecs @ page_vecs.flatten(0, 1).T / temperature  # [N, B * L]
    logits = logits.masked_fill(~page_mask.flatten()[None, :], float("-inf"))
    positive = logits.masked_fill(~positives, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positive, dim=1)).mean()


def reading_loss(cell_states, embeddings, cell_index: Sequence[int], token_ids: Sequence[int]):
    """Each word-bearing cell of the vision tower's output ``[C, hidden]`` must name its words.

    Logits are dot products with the decoder's input token embeddings ``[V, hidden]``, so a
    visual token enters the decoder looking like the words it shows (the query path reads those
    same embeddings). Multi-positive softmax over the vocabulary; ``(cell_index[i],
    token_ids[i])`` pairs list every word of every cell.
    """
    import torch

    cells, inverse = np.unique(np.asarray(cell_index), return_inverse=True)
    logits = cell_states[torch.from_numpy(cells)].float() @ embeddings.float().T  # [K, V]
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[torch.from_numpy(inverse), torch.as_tensor(token_ids)] = True
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)).mean()


def maxsim_scores(query_vecs, query_mask, page_vecs, page_mask):
    """``[Q, B]`` MaxSim scores averaged over each query's tokens (padding excluded on both sides)."""
    import torch

    sim = torch.einsum("qtd,bld->qbtl", query_vecs, page_vecs)  # [Q, B, T, L]
    sim = sim.masked_fill(~page_mask[None, :, None, :], float("-inf")).amax(-1)  # [Q, B, T]
    sim = sim * query_mask[:, None, :]
    return sim.sum(-1) / query_mask.sum(-1, keepdim=True)


def cross_page_cosine(page_vecs, page_mask) -> float:
    """Mean cosine between (word-bearing) visual tokens of different pages (1.0 = collapsed)."""
    per_page = (page_vecs * page_mask[..., None]).sum(1)  # [B, 128]
    total = per_page.sum(0)
    counts = page_mask.sum(1).float()
    pairs = counts.sum() ** 2 - (counts ** 2).sum()
    return float(((total @ total) - (per_page * per_page).sum()) / pairs)


def _positives(samples: Sequence[PageSample], word_ids: Sequence[int], longest: int) -> np.ndarray:
    out = np.zeros((len(word_ids), len(samples) * longest), dtype=bool)
    for row, w in enumerate(word_ids):
        for b, s in enumerate(samples):
            cells = s.word_cells.get(w)
            if cells is not None:
                out[row, b * longest + cells] = True
    return out


def _pseudo_query(sample: PageSample, rng: np.random.Generator, n: int, vocab_words: Sequence[str]):
    ids = np.array(sorted(sample.word_cells))
    chosen = rng.choice(ids, size=min(n, len(ids)), replace=False) if len(ids) else ids
    return [int(i) for i in chosen], " ".join(vocab_words[int(i)] for i in chosen)


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    decay = config.steps if config.decay_steps is None else config.decay_steps
    progress = min(1.0, (step - config.warmup) / max(1, decay - config.warmup))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _stage_at(config: TrainConfig, step: int) -> tuple[Stage, int]:
    """The stage that ``step`` belongs to, and how many steps of that stage came before it."""
    start = 0
    for stage in config.stages:
        if step < start + stage.steps:
            return stage, step - start
        start += stage.steps
    raise ValueError(f"step {step} is past the last stage ({config.steps} steps)")


def _maxsim_weight(config: TrainConfig, stage: Stage, step_in_stage: int) -> float:
    """0 on cropped stages (a page's queries may lie outside the window), then a linear ramp."""
    return 0.0 if stage.crop else min(1.0, (step_in_stage + 1) / config.maxsim_ramp)


class _Validation:
    """A small held-out set (test split, its own seed, never the benchmark's) scored by NDCG@5."""

    def __init__(self, config: TrainConfig, stage: Stage, processor, workdir: Path):
        from sapindex.benchdata.synthetic import build_benchmark
        from sapindex.eval.datasets import load_dataset

        build_benchmark(workdir, config.val_pages, config.val_queries, seed=config.seed + 10_000, split="test",
                        vocab_size=stage.vocab_size, min_font_px=stage.min_font_px, workers=config.render_workers)
        ds = load_dataset(workdir)
        self.pages = [PageSample(*preprocess(processor.image_processor, page.load()), {}, ()) for page in ds.pages]
        self.page_ids = [page.id for page in ds.pages]
        self.queries = [(q.id, q.text) for q in ds.queries]
        self.qrels = ds.qrels

    def ndcg5(self, model, batches: Batches, batch_size: int) -> tuple[float, float]:
        """NDCG@5 of the model as shipped (every query token), and with the query's own words only.

        The second number leaves out the prefix and the augmentation tokens, which only the
        final whole-page MaxSim stage trains: the gap shows how much of what the model reads
        their untrained vectors hide.
        """
        import torch

        from sapindex.eval.metrics import maxsim_matrix, retrieval_metrics

        model.eval()
        pages, queries, words = [], [], []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for i in range(0, len(self.pages), batch_size):
                vecs, mask = page_vectors(model, batches, self.pages[i: i + batch_size])
                pages += [v[m].float().numpy() for v, m in zip(vecs, mask, strict=True)]
            for i in range(0, len(self.queries), batch_size):
                inputs = batches.queries([t for _, t in self.queries[i: i + batch_size]])
                out = model(**inputs).float()
                for v, m in zip(out, inputs["attention_mask"], strict=True):
                    valid = v[m.bool()].numpy()  # right-padded: prefix, words, augmentation tokens
                    queries.append(valid)
                    words.append(valid[batches.query_offset: len(valid) - batches.query_suffix_len])
        model.train()
        ids = [q for q, _ in self.queries]
        return tuple(float(retrieval_metrics(maxsim_matrix(qs, pages), ids, self.page_ids, self.qrels,
                                             ks=(5,))["ndcg@5"])
                     for qs in (queries, words))


STATE_FILE = "train_state.pt"


def train(config: TrainConfig, out_dir: str | Path, log: Callable[[str], None] = print, resume: bool = False,
          max_steps: int | None = None) -> dict | None:
    """Train, keep the best validation checkpoint, write it (model, processor, train_log.json).

    At every validation the whole training state (weights, optimizer, random generators, curve)
    goes to ``out_dir/train_state.pt``; ``resume`` continues from it, so a run that is stopped
    (a session's end, kill -9) loses at most ``eval_every`` steps and gives the same result.
    ``max_steps`` stops this call after that many steps (a multiple of ``eval_every``, so the
    state is saved) and returns None without writing the model: training split across sessions.
    """
    prepare_torch_side()
    model, processor, vocab_words, token_of = _build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {config.steps} steps of {config.batch_size} pages")
    rendered, render_s = _render_pools(config, token_of, processor.image_processor, log)
    with tempfile.TemporaryDirectory() as tmp:
        validation = _Validation(config, config.stages[-1], processor, Path(tmp))
    run = _Run.start(config, model, processor, vocab_words)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    if resume and state_path.exists():
        run.restore(state_path)
        log(f"resumed at step {run.step} from {state_path}")
    run.started = time.time()
    last = config.steps if max_steps is None else min(config.steps, run.step + max_steps)
    for step in range(run.step, last):
        weight = run.train_step(step, rendered)
        _check_collapse(config, run.smoothed, step)
        if (step + 1) % 10 == 0:
            log(f"  step {step + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in run.smoothed.items()))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            run.validate(validation, step + 1, weight, log)
            run.save(state_path)
    if last < config.steps:
        log(f"stopped at step {last} of {config.steps}; continue with --resume")
        return None
    return _write_model(run, processor, out, n_params, render_s)


def _build_model(config: TrainConfig):
    """Seed torch, then build the word tokenizer and the untrained model: the initial weights are the
    seeded generator's first draws, so this runs before anything else draws from it.

    Returns the model, its processor, the tokenizer's vocabulary by token id, and the token id of
    every benchmark word (what the renderer labels cells with).
    """
    import torch

    from sapindex.benchdata.render import vocabulary

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    words = vocabulary()
    tokenizer = build_word_tokenizer(words)
    model, processor = make_tiny(replace(config.model, seed=config.seed), tokenizer)
    vocab_words = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    known = set(words)
    return model, processor, vocab_words, {w: i for i, w in enumerate(vocab_words) if w in known}


def _render_pools(config: TrainConfig, token_of: dict[str, int], image_processor,
                  log: Callable[[str], None]) -> tuple[dict, float]:
    """Render every stage's page pool once, before training: stages with the same pool settings share
    it, and each new pool's pages follow the previous ones' (so no two pools repeat a page).

    Returns the pools by ``Stage.pool_key`` and the seconds rendering took (for train_log.json).
    """
    started = time.time()
    rendered, start = {}, 0
    for stage in config.stages:
        if stage.pool_key not in rendered:
            rendered[stage.pool_key] = render_pool(config.seed, stage, start, token_of,
                                                   image_processor.size["shortest_edge"],
                                                   image_processor.size["longest_edge"], config.render_workers)
            start += stage.pages
    render_s = time.time() - started
    log(f"rendered {start} training pages in {render_s:.0f} s")
    return rendered, render_s


def _check_collapse(config: TrainConfig, smoothed: dict[str, float], step: int) -> None:
    """Stop a run whose page tokens have all become one vector (see the module docstring): it does not
    recover, and hours of training would be spent on a useless model."""
    if step >= config.collapse_after * config.steps and smoothed["cosine"] > config.collapse_cosine:
        raise RuntimeError(f"training collapsed at step {step}: mean cross-page token cosine "
                           f"{smoothed['cosine']:.4f} > {config.collapse_cosine}")


@dataclass
class _Run:
    """One training run: the model and what trains with it, the seeded generator that draws the
    batches, and the curve so far.

    Why one object: the training step, the validation and the checkpoint all use the same dozen
    things, and a checkpoint must save exactly what a resumed run needs to continue bit for bit.
    """

    config: TrainConfig
    model: object
    char_head: object  # the per-cell character head, trained beside the model and dropped after
    optimizer: object
    batches: Batches
    vocab_words: list[str]
    rng: np.random.Generator
    merged: list = field(default_factory=list)  # the vision merger's output of the last forward (a hook adds it)
    history: list[dict] = field(default_factory=list)
    best: float = -1.0
    best_state: dict | None = None
    smoothed: dict[str, float] = field(default_factory=dict)
    step: int = 0  # the next step to train
    spent_before: float = 0.0  # training seconds of the runs this one resumed
    started: float = 0.0  # time.time() when this call started training

    @classmethod
    def start(cls, config: TrainConfig, model, processor, vocab_words: list[str]) -> _Run:
        """The optimizer and the character head for ``model``: made after the model, the pools and the
        validation set, because the head's initial weights come from the seeded torch generator."""
        import torch

        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        char_head = torch.nn.Linear(model.config.text_config.hidden_size, len(CHARACTERS))
        optimizer.add_param_group({"params": char_head.parameters()})
        model.train()
        run = cls(config, model, char_head, optimizer, Batches(model, processor), vocab_words,
                  np.random.default_rng(config.seed))
        model.visual.merger.register_forward_hook(lambda module, args, output: run.merged.append(output))
        return run

    def seconds(self) -> float:
        """Training seconds, cumulative over resumed runs."""
        return self.spent_before + time.time() - self.started

    def restore(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``, refusing one that another configuration saved."""
        import torch

        state = torch.load(path, weights_only=False)
        if state["config"] != jsonable(asdict(self.config)):
            raise ValueError(f"{path}: saved by a run with another configuration; cannot resume")
        self.model.load_state_dict(state["model"])
        self.char_head.load_state_dict(state["char_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.history, self.best, self.best_state, self.smoothed, self.step = (
            state["history"], state["best"], state["best_state"], state["smoothed"], state["step"])
        self.spent_before = self.history[-1]["seconds"] if self.history else 0.0

    def save(self, path: Path) -> None:
        """Checkpoint all a resumed run needs, written beside ``path`` and renamed, so that a run killed
        while saving keeps its previous checkpoint."""
        import torch

        torch.save(dict(config=jsonable(asdict(self.config)), step=self.step, model=self.model.state_dict(),
                        char_head=self.char_head.state_dict(), optimizer=self.optimizer.state_dict(),
                        rng=self.rng.bit_generator.state, torch_rng=torch.get_rng_state(), history=self.history,
                        best=self.best, best_state=self.best_state, smoothed=self.smoothed), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def train_step(self, step: int, rendered: dict) -> float:
        """One optimizer step on a freshly drawn batch; folds its figures into ``smoothed`` and returns
        the weight the MaxSim loss had (the curve records it)."""
        import torch

        config = self.config
        stage, step_in_stage = _stage_at(config, step)
        samples, pseudo, real = self._draw_batch(stage, rendered[stage.pool_key])
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        losses, page_vecs, word_mask = self._losses(samples, pseudo, real)
        weight = _maxsim_weight(config, stage, step_in_stage)
        loss = (losses["dense"] + config.reading_weight * losses["read"] + config.character_weight * losses["char"]
                + weight * losses["maxsim"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()

        cosine = cross_page_cosine(page_vecs.detach(), word_mask)
        for key, value in [*((k, v.item()) for k, v in losses.items()), ("cosine", cosine)]:
            self.smoothed[key] = value if key not in self.smoothed else 0.9 * self.smoothed[key] + 0.1 * value
        return weight

    def _draw_batch(self, stage: Stage, pool: list[PageSample]):
        """This step's pages (windows of them on cropped stages), a pseudo-query of each page's words,
        and one real query per page on whole-page stages. The generator's draws keep this order
        (pages, crops, pseudo-queries, real queries): a resumed run replays them."""
        rng = self.rng
        size = min(stage.batch_size or self.config.batch_size, len(pool))
        samples = [pool[i] for i in rng.choice(len(pool), size=size, replace=False)]
        if stage.crop:
            samples = [crop(s_, rng, stage.crop) for s_ in samples]
        pseudo = [_pseudo_query(s, rng, self.config.words_per_page, self.vocab_words) for s in samples]
        real = [] if stage.crop else [s.queries[rng.integers(len(s.queries))] if s.queries else "" for s in samples]
        return samples, pseudo, real

    def _losses(self, samples: list[PageSample], pseudo: list[tuple[list[int], str]], real: list[str]):
        """The batch's losses by name (dense, read, char, maxsim; maxsim 0 without real queries), and
        the page vectors and word-cell mask the collapse watch measures."""
        import torch

        batches, config = self.batches, self.config
        self.merged.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            page_vecs, page_mask = page_vectors(self.model, batches, samples)
            q_inputs = batches.queries([text for _, text in pseudo] + real)
            q_out = self.model(**q_inputs).float()  # [2B, T, 128]
        n = len(samples)
        rows, cols, word_ids = _pseudo_query_tokens(batches, q_inputs, pseudo)
        positives = torch.from_numpy(_positives(samples, word_ids, page_vecs.shape[1]))
        l_dense = dense_loss(q_out[rows, cols], page_vecs, page_mask, positives, config.dense_temperature)
        cell_index, cell_tokens, word_mask = _cell_words(samples, page_mask)
        cells = self.merged[-1]
        l_read = reading_loss(cells, self.model.get_input_embeddings().weight, cell_index, cell_tokens)
        char_targets = torch.from_numpy(np.concatenate([s_.cell_chars for s_ in samples])).float()
        l_char = torch.nn.functional.binary_cross_entropy_with_logits(
            self.char_head(cells.float()), char_targets, reduction="none").sum(-1).mean()
        l_maxsim = torch.zeros(())
        if real:
            scores = maxsim_scores(q_out[n:], q_inputs["attention_mask"][n:].float(), page_vecs, page_mask)
            l_maxsim = torch.nn.functional.cross_entropy(scores / config.maxsim_temperature, torch.arange(n))
        return dict(dense=l_dense, read=l_read, char=l_char, maxsim=l_maxsim), page_vecs, word_mask

    def validate(self, validation: _Validation, steps_done: int, weight: float, log: Callable[[str], None]) -> None:
        """Score the model on the held-out set, extend the curve, and keep the weights if they are the
        best so far: the shipped model is the best validated one, not the last."""
        ndcg, ndcg_words = validation.ndcg5(self.model, self.batches, 4)  # whole pages: small batches bound memory
        elapsed = self.seconds()
        smoothed = self.smoothed
        self.history.append(dict(step=steps_done, seconds=round(elapsed, 1), ndcg5=round(ndcg, 4),
                                 ndcg5_query_words_only=round(ndcg_words, 4),
                                 **{k: round(v, 4) for k, v in smoothed.items()}, maxsim_weight=round(weight, 3)))
        log(f"step {steps_done}/{self.config.steps}  {elapsed:.0f}s  char {smoothed['char']:.3f}  "
            f"read {smoothed['read']:.3f}  dense {smoothed['dense']:.3f}  "
            f"maxsim {smoothed['maxsim']:.3f}  cos {smoothed['cosine']:.3f}  val ndcg@5 {ndcg:.3f} "
            f"(query words only {ndcg_words:.3f})")
        if ndcg > self.best:
            self.best, self.best_state = ndcg, copy.deepcopy(self.model.state_dict())
        self.step = steps_done


def _pseudo_query_tokens(batches: Batches, q_inputs: dict, pseudo: list[tuple[list[int], str]]):
    """Where each pseudo-query word sits in the query batch (row, column) and its token id: the query
    tokens the dense loss trains. Each word must be one token, right after the query prefix."""
    rows, cols, word_ids = [], [], []
    for b, (ids, _) in enumerate(pseudo):
        for j, w in enumerate(ids):
            assert int(q_inputs["input_ids"][b, batches.query_offset + j]) == w
            rows.append(b)
            cols.append(batches.query_offset + j)
            word_ids.append(w)
    return rows, cols, word_ids


def _cell_words(samples: Sequence[PageSample], page_mask):
    """Every (merged cell, word) pair of the batch's pages, cells numbered across the pages as the
    vision tower concatenates them (the reading loss's targets), and the ``[B, L]`` mask of the
    visual tokens that hold a word (the collapse watch compares only those)."""
    import torch

    cell_index, cell_tokens, offset = [], [], 0
    word_mask = torch.zeros_like(page_mask)
    for b, s_ in enumerate(samples):
        for w, cells in s_.word_cells.items():
            cell_index += (offset + cells).tolist()
            cell_tokens += [w] * len(cells)
            word_mask[b, torch.from_numpy(cells)] = True
        offset += s_.n_cells
    return cell_index, cell_tokens, word_mask


def _write_model(run: _Run, processor, out: Path, n_params: int, render_s: float) -> dict:
    """Write the best validated weights with the processor, and train_log.json: the recipe, the curve
    and the machine, so a shipped model says how it was made. Returns that log."""
    import torch

    run.model.load_state_dict(run.best_state)
    run.model.eval()
    run.model.save_pretrained(out)
    processor.save_pretrained(out)
    report = dict(config=jsonable(asdict(run.config)), parameters=n_params, best_val_ndcg5=run.best,
                  history=run.history, render_seconds=round(render_s, 1), train_seconds=round(run.seconds(), 1),
                  machine=f"{platform.machine()} {platform.processor() or ''}".strip(), threads=run.config.threads,
                  torch=torch.__version__)
    (out / "train_log.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sapindex.micro.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="micro",
                        help="micro: the shipped model's recipe (about 7.7 h on 2 cores); "
                             "smoke: seconds on a tiny model (CI)")
    parser.add_argument("--smoke", action="store_true", help="same as --preset smoke")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE} if present")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps (a multiple of the validation interval), resumable")
    args = parser.parse_args(argv)
    config = replace(PRESETS["smoke" if args.smoke else args.preset], seed=args.seed)
    if args.threads:
        config = replace(config, threads=args.threads)
    report = train(config, args.out, log=lambda m: print(m, flush=True), resume=args.resume, max_steps=args.max_steps)
    if report is None:
        return 0
    print(f"best validation NDCG@5 {report['best_val_ndcg5']:.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
