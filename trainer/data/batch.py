"""From task records to padded tensor batches, with a data order fixed by (seed, step).

The order of training examples is a function of the seed and the step alone: epoch e is a permutation
seeded by (seed, e), and step s takes the next global batch from the concatenated epochs. Rank r's m-th
micro batch is slice (m * world + r) of that global batch, so a 2-rank run sees exactly the micro batches
of a 1-rank run with twice the accumulation, and a resumed run continues where it stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch

from trainer.data.tasks import Example

if TYPE_CHECKING:
    from trainer.config import DataConfig
    from trainer.data.splits import RunSplits


@dataclass
class Encoded:
    """Token ids of a list of examples. input_ids end with </s>; labels end with </s>."""

    examples: list[Example]
    task_ids: list[int]
    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int
    """How many inputs were cut to fit max_source_length."""


def task_names(cfg: DataConfig) -> list[str]:
    return [name.strip() for name in cfg.task.split(",") if name.strip()]


def encode(examples: list[Example], task_ids: list[int], tokenizer, max_source_length: int,
           prompt_length: int, max_target_length: int, bos: bool = False, chat_template: bool = False) -> Encoded:
    """Tokenise inputs and targets.

    l prompt positions come before the input, so an input keeps at most max_source_length - l - 1 tokens
    followed by </s>: truncation never drops the final </s>, which says where the input ends (the causal
    family's target follows it). bos / chat_template: see `encode_inputs`. A target keeps at most
    max_target_length - 1 tokens followed by </s>.
    """
    eos = tokenizer.eos_token_id
    input_ids, truncated = encode_inputs([ex.input for ex in examples], tokenizer, max_source_length - prompt_length - 1,
                                         bos, chat_template)
    targets = tokenizer([ex.target for ex in examples], add_special_tokens=False).input_ids
    labels = [ids[: max_target_length - 1] + [eos] for ids in targets]
    return Encoded(examples, task_ids, input_ids, labels, truncated)


def encode_inputs(texts: list[str], tokenizer, room: int, bos: bool = False,
                  chat_template: bool = False) -> tuple[list[list[int]], int]:
    """Input ids of `texts` and how many were cut: at most `room` tokens (BOS included), then </s>.

    bos: the tokenizer's BOS first (a causal LM's tokenizer that has one). chat_template: each text as one
    user turn of the tokenizer's chat template with the assistant's turn opened (the template's own special
    tokens, no </s> after it); a text is cut so that the whole fits in room + 1 tokens.
    """
    sources = tokenizer(texts, add_special_tokens=False).input_ids
    if chat_template:
        def template(text: str) -> list[int]:
            return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=False))
        budget = room + 1 - len(template(""))
        ids = [template(text if len(s) <= budget else tokenizer.decode(s[:max(0, budget)]))
               for text, s in zip(texts, sources)]
        return ids, sum(len(s) > budget for s in sources)
    first = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    room -= len(first)
    return [first + s[:room] + [tokenizer.eos_token_id] for s in sources], sum(len(s) > room for s in sources)


@dataclass
class EncodedSplits:
    """The run's examples as token ids: trained on, evaluated on during training, tested on once at the end."""

    train: Encoded
    eval: Encoded
    test: Encoded | None
    """data.splits=paper: the held-out test set; None otherwise."""
    eval_name: str
    """Which split `eval` is ("val", or "dev" with data.splits=paper), for the eval events."""


def encode_splits(splits: RunSplits, tokenizer, cfg: DataConfig, prompt_length: int, bos: bool = False
                  ) -> EncodedSplits:
    """`encode` every split of the run, leaving room for `prompt_length` prompt positions."""
    def one(split):
        return None if split is None else encode(split.examples, split.task_ids, tokenizer, cfg.max_source_length,
                                                 prompt_length, cfg.max_target_length, bos, cfg.chat_template)

    return EncodedSplits(one(splits.train), one(splits.eval), one(splits.test), splits.eval.name)


def pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids to the longest row (dynamic padding): the one padding of the trainer and its tools.

    Returns ids (len(rows), longest) filled with `pad_id` after each row, and mask (len(rows), longest),
    1 on real tokens.
    """
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest member. Labels are padded with -100 (ignored by the loss)."""
    input_ids, attention_mask = pad([data.input_ids[i] for i in indices], pad_id)
    labels, _ = pad([data.labels[i] for i in indices], -100)
    task_ids = torch.tensor([data.task_ids[i] for i in indices], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "task_ids": task_ids}


class TrainOrder:
    """Which examples, and which router noise, each rank uses at each step.

    Args:
        num_examples: size of the training set.
        global_batch: examples per optimiser step over all ranks.
        seed: run seed.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int):
        self.n, self.global_batch, self.seed = num_examples, global_batch, seed
        self._epoch, self._perm = -1, None

    def global_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch of optimiser step `step` (0-based)."""
        out, start = [], step * self.global_batch
        for position in range(start, start + self.global_batch):
            epoch, offset = divmod(position, self.n)
            out.append(self._permutation(epoch)[offset])
        return out

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[list[int]]:
        """Rows of the global batch (positions 0..global_batch-1) forming this rank's micro batches."""
        accum = self.global_batch // (micro * world)
        return [list(range((m * world + rank) * micro, (m * world + rank + 1) * micro)) for m in range(accum)]

    def noise(self, step: int, num_prompts: int) -> torch.Tensor:
        """Standard-normal router noise (global_batch, k) for `step`, the same on every rank and world size."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(self.global_batch, num_prompts, generator=gen)

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).tolist()
        return self._perm


class LengthGroupedOrder:
    """Another order's examples, regrouped so that a global batch holds inputs of similar length.

    Steps come in windows of `window` global batches. A window takes the examples the inner order gives
    its steps, sorts them by input length, cuts them into global batches and shuffles those with a
    (seed, window) generator. Consecutive rows of a global batch form a micro batch, so dynamic padding
    pads each micro batch to a length its rows nearly share. Every example keeps its window (and so its
    epoch), and the order stays a function of (seed, step). Noise and micro-batch slicing are the inner
    order's.
    """

    def __init__(self, inner: TrainOrder, lengths: list[int], window: int):
        self.inner, self.lengths, self.window = inner, lengths, window
        self.global_batch, self.seed = inner.global_batch, inner.seed
        self._cached: tuple[int, list[list[int]]] = (-1, [])

    def global_indices(self, step: int) -> list[int]:
        w, position = divmod(step, self.window)
        if self._cached[0] != w:
            pooled = [i for s in range(w * self.window, (w + 1) * self.window) for i in self.inner.global_indices(s)]
            pooled.sort(key=lambda i: self.lengths[i])  # stable: equal lengths keep the inner order
            batches = [pooled[b * self.global_batch: (b + 1) * self.global_batch] for b in range(self.window)]
            gen = torch.Generator().manual_seed(self.seed * 104_729 + w)
            self._cached = (w, [batches[b] for b in torch.randperm(self.window, generator=gen).tolist()])
        return self._cached[1][position]

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[list[int]]:
        return self.inner.micro_batches(step, rank, world, micro)

    def noise(self, step: int, num_prompts: int) -> torch.Tensor:
        return self.inner.noise(step, num_prompts)


def eval_shards(num_examples: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
    """This rank's evaluation batches: examples rank, rank + world, ...

    Every rank gets the same number of batches, because each batch is a forward (or generate) in which
    ZeRO-3 needs every rank. A rank with nothing left gets an empty batch, which the caller fills with a
    placeholder and drops, so each example is predicted exactly once.
    """
    mine = list(range(rank, num_examples, world))
    batches = math.ceil(math.ceil(num_examples / world) / batch_size)
    return [mine[b * batch_size: (b + 1) * batch_size] for b in range(batches)]
