"""Evaluation under ZeRO-3: shard each task's examples over ranks, predict, gather once, score.

Every forward and every `generate` of a ZeRO-3 backbone is a collective (each module's weights are
gathered from all ranks), so all ranks must make the same calls in the same order. Tasks are therefore
evaluated one after another in `data.task` order, each with the same number of batches on every rank
(`eval_shards` pads a short rank with empty batches, run on a placeholder example whose output is
dropped), and the prediction mode is a property of the task, identical on every rank:

- rank classification (`eval.mode=rank`, tasks with label words): score each label word, take the best;
- generation (`eval.mode=generate`, and ReCoRD / jsonl in either mode): greedy decoding with
  `synced_gpus`, which keeps a rank that has finished decoding stepping until every rank has.

Predictions are gathered from all ranks once per evaluation and written by rank 0 to
`predictions-<task>-<step>.jsonl` (the test set: `predictions-<task>-test-<step>.jsonl`), one
`{"idx", "prediction", "prompt"}` object per example in the format `trainer/cli/evaluate.py` reads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from trainer.config import EvalMode
from trainer.data.batch import Encoded, collate, eval_shards
from trainer.data.metrics import idx_key, score, superglue_average
from trainer.data.tasks import Task, get_task
from trainer.monitor.monitor import routing_summary
from trainer.runtime import checkpoint, distributed, storage
from trainer.runtime.eval_gather import maybe_whole_backbone
from trainer.runtime.hardware import local_ranks


def evaluate(run, test: bool = False) -> dict:
    """Predict every example of the eval set (or, with `test`, the test set) exactly once; log and return
    the event: per-task metrics as "<task>/<metric>", their "average" for mixtures, and routing figures.

    Under ZeRO-3 the backbone is gathered once for the whole evaluation when it fits (eval.gather_backbone;
    trainer/runtime/eval_gather.py). Full fine-tuning's backbone is the training engine: left to gather per
    module."""
    force = run.cfg.eval.gather_backbone if not run.update.trains_backbone else False
    with maybe_whole_backbone(run.model.backbone, run.dist.device, local_ranks(run.dist.world_size),
                              force) as gathered:
        event = _evaluate(run, test)
    run.monitor.log({"event": "eval_gather", "step": run.state.step, "backbone_gathered": gathered})
    return event


def _evaluate(run, test: bool) -> dict:
    d, e = run.dist, run.cfg.eval
    data: Encoded = run.data.test if test else run.data.eval
    run.model.train(False)
    started, mine = time.time(), []
    counts = torch.zeros(len(run.task_names), run.model.method.num_prompts, dtype=torch.long)
    for t, name in enumerate(run.task_names):
        positions = [i for i, task_id in enumerate(data.task_ids) if task_id == t]
        if not positions:  # the same on every rank: all hold the whole (unsharded) list
            continue
        task = get_task(name)
        candidates = label_ids(run.tokenizer, task) if e.mode == EvalMode.RANK and task.label_words else None
        for shard in eval_shards(len(positions), d.rank, d.world_size, e.batch_size):
            indices = [positions[j] for j in shard]
            batch = collate(data, indices or positions[:1], run.tokenizer.pad_token_id)  # placeholder: see above
            batch = {key: value.to(d.device) for key, value in batch.items()}
            texts, routing = predict(run, batch, task, candidates)
            for i, text, prompt in zip(indices, texts, routing.index.tolist()):
                mine.append((i, text, prompt))
                counts[t, prompt] += 1
    predicted = [item for part in distributed.all_gather_objects(mine) for item in part]
    # Routing counts over every rank's examples: each rank saw only its shard.
    counts = distributed.all_reduce_sum(counts.to(d.device)).cpu()
    event = {"event": "test" if test else "eval", "split": "test" if test else run.data.eval_name,
             "step": run.state.step, "num_examples": len(predicted)}
    results, files = {}, []
    for t, name in enumerate(run.task_names):
        rows = sorted((i, text, prompt) for i, text, prompt in predicted if data.task_ids[i] == t)
        if not rows:
            continue
        examples = [data.examples[i] for i, _, _ in rows]
        predictions = {idx_key(data.examples[i].idx): text for i, text, _ in rows}
        results[name] = score(get_task(name), examples, predictions)
        event.update({f"{name}/{key}": value for key, value in results[name].items()})
        files.append((name, rows))
    # Rank 0 writes; every rank learns at once if the storage refused (trainer/runtime/storage.py).
    storage.written_by_main(
        d, f"the predictions of step {run.state.step}", Path(run.cfg.output_dir),
        lambda: f"the run stopped at step {run.state.step}; {checkpoint.resume_point(checkpoint.checkpoints_dir(run.cfg))}",
        lambda: [write_predictions(run, data, name, rows, "test-" if test else "") for name, rows in files])
    if len(results) > 1:
        event["average"] = superglue_average(results)
    event.update(routing_summary(counts, run.task_names))
    event["eval_s"] = round(time.time() - started, 2)
    run.monitor.log(event)
    return event


def label_ids(tokenizer, task: Task) -> list[torch.Tensor]:
    """Token ids of each label word of `task`, ending in </s> like the training targets."""
    eos = tokenizer.eos_token_id
    return [torch.tensor(tokenizer(w, add_special_tokens=False).input_ids + [eos]) for w in task.label_words]


def predict(run, batch: dict, task: Task, candidates: list[torch.Tensor] | None) -> tuple[list[str], object]:
    """Predicted texts of a batch: the best-scoring label word (candidates given) or a greedy generation."""
    if candidates is not None:
        scores, routing = run.model.score_candidates(batch, candidates)  # scores: (batch, num_labels)
        return [task.label_words[i] for i in scores.argmax(-1).tolist()], routing
    out, routing = run.model.generate(batch, run.cfg.eval.max_new_tokens, synced_gpus=run.dist.world_size > 1)
    return [text.strip() for text in run.tokenizer.batch_decode(out, skip_special_tokens=True)], routing


def write_predictions(run, data: Encoded, task: str, rows: list, prefix: str = "") -> None:
    """predictions-<task>-<prefix><step>.jsonl in the scorer's format, plus the prompt each example was
    routed to (the scorer ignores extra fields)."""
    if not run.dist.is_main:
        return
    path = Path(run.cfg.output_dir) / f"predictions-{task}-{prefix}{run.state.step}.jsonl"
    with open(path, "w") as f:
        for i, text, prompt in rows:
            f.write(json.dumps({"idx": data.examples[i].idx, "prediction": text, "prompt": prompt}) + "\n")
