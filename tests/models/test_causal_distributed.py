"""The causal family through the real entry point: 2 gloo ranks under ZeRO-3 equal 1 rank, resume is exact and
smop-predict equals the trainer's evaluation example by example, on the shipped small Llama (a save_pretrained
directory with tied embeddings, loaded as any checkpoint is) and the instruction-free mixture; every method
trains on a tiny random Llama (`model.family=causal`), IAPT on the decoder layers, full fine-tuning with tied
embeddings."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import REPO, events, run_trainer
from trainer.cli.export import export
from trainer.paths import EMBEDDED_DATA_DIR
from trainer.runtime.distributed import free_port

pytestmark = pytest.mark.multiprocess

CAUSAL = ["model.family=causal", "model.dropout=0", "train.global_batch_size=8", "train.check_replicas_every=1",
          "eval.mode=generate", "eval.max_new_tokens=4", "train.router_lr=0.05"]
MIXTURE = "jsonl:copy,jsonl:reverse,jsonl:sort,jsonl:count"
SHIPPED = CAUSAL + ["model.name_or_path=tiny-pretrained-causal", f"data.task={MIXTURE}", "data.max_eval_examples=8",
                    "eval.max_new_tokens=8", "train.max_steps=6", "checkpoint.every=2"]


def losses(out) -> list[float]:
    return [e["loss"] for e in events(out, "train")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One rank, two ranks, and one rank stopped after step 3 then resumed: the same 6 steps."""
    one, two, resumed = (tmp_path_factory.mktemp(name) for name in ("one", "two", "resumed"))
    run_trainer(one, *SHIPPED, nproc=1)
    run_trainer(two, *SHIPPED, nproc=2)
    stopped = run_trainer(resumed, *SHIPPED, "checkpoint.stop_at=3", check=False)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    run_trainer(resumed, *SHIPPED)
    return one, two, resumed


def test_two_ranks_equal_one_rank_on_a_causal_backbone(runs):
    one, two, _ = runs
    assert len(losses(one)) == 6 and losses(one) == pytest.approx(losses(two), rel=1e-5, abs=1e-6)
    assert losses(one)[0] != losses(one)[-1]
    a, b = load_file(one / "method_final.safetensors"), load_file(two / "method_final.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    checks = events(two, "replica_check")
    assert len(checks) == 6 and all(c["identical"] and c["dtypes"] == ["float32"] for c in checks)
    # Greedy generation on 2 ZeRO-3 ranks (synced_gpus) predicts what one rank predicts.
    p1, p2 = (sorted(one.glob("predictions-*-6.jsonl")), sorted(two.glob("predictions-*-6.jsonl")))
    assert [p.name for p in p1] == [p.name for p in p2] and p1
    for x, y in zip(p1, p2):
        assert x.read_text() == y.read_text()
    info = json.loads((two / "run_info.json").read_text())
    assert info["backbone_params"] > 0 and info["backbone_params_on_rank0"] < info["backbone_params"]  # sharded


def test_resume_is_exact_on_a_causal_backbone(runs):
    one, _, resumed = runs
    a, b = losses(one), losses(resumed)
    assert [e["step"] for e in events(resumed, "train")] == [1, 2, 3, 4, 5, 6]
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    x, y = load_file(one / "method_final.safetensors"), load_file(resumed / "method_final.safetensors")
    assert max(float((x[k] - y[k]).abs().max()) for k in x) <= 1e-6
    assert [e["step"] for e in events(resumed, "resume")] == [3]


def test_predict_equals_the_trainers_evaluation_example_by_example(runs, tmp_path):
    """smop-predict loads the backbone as any checkpoint (frozen, tied embeddings) and the exported adapter on one
    device: every prediction and routing equals the trainer's evaluation (greedy, the KV cache)."""
    one, _, _ = runs
    inputs, expected = tmp_path / "in.jsonl", {}
    for task in MIXTURE.split(","):
        for r in (json.loads(line) for line in next(one.glob(f"predictions-{task}-6.jsonl")).read_text().splitlines()):
            expected[f"{task}/{r['idx']}"] = r
    records = {f"{task}/{json.loads(line)['idx']}": json.loads(line)["input"]
               for task in MIXTURE.split(",")
               for line in (EMBEDDED_DATA_DIR / task.split(":")[1] / "val.jsonl").read_text().splitlines()}
    inputs.write_text("".join(json.dumps({"input": records[key], "idx": key}) + "\n" for key in expected))
    out = tmp_path / "p.jsonl"
    proc = subprocess.run([sys.executable, "-m", "trainer.cli.predict", "--backbone", "tiny-pretrained-causal",
                           "--adapter", str(one / "adapter"), "--input", str(inputs), "--max_new_tokens", "8",
                           "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {json.loads(line)["idx"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(expected) == 32 and ours.keys() == expected.keys()
    for key, r in expected.items():
        assert (ours[key]["prediction"], ours[key]["prompt"]) == (r["prediction"], r["prompt"]), key
    assert len({r["prediction"] for r in expected.values()}) > 8  # real generations, varied
    assert len({r["prompt"] for r in expected.values()}) > 1  # the router really chooses
    # smop-export rebuilds the same adapter from the run directory (the causal backbone's config hash).
    exported = export(one, tmp_path / "exported")
    for name in ("adapter.safetensors", "adapter_config.json"):
        assert (exported / name).read_bytes() == (one / "adapter" / name).read_bytes()


def test_iapt_and_full_finetuning_on_two_ranks(tmp_path):
    """IAPT's generators on every decoder layer under ZeRO-3 (their zero-initialised up projections move only
    through hooks that fired), and full fine-tuning with tied input and output embeddings: one parameter,
    trained, and written whole."""
    iapt, ft = tmp_path / "iapt", tmp_path / "ft"
    run_trainer(iapt, *CAUSAL, "prompt.method=iapt", "prompt.iapt_bottleneck=8", "train.lr=0.01",
                "train.max_steps=3", nproc=2)
    final = load_file(iapt / "method_final.safetensors")
    assert final["generators.0.up.weight"].abs().sum() > 0 and final["generators.1.up.weight"].abs().sum() > 0
    assert events(iapt, "setup")[0]["prompt_positions"] == 4
    run_trainer(ft, *CAUSAL, "prompt.method=full_finetune", "train.lr=0.003", "train.warmup_ratio=0",
                "train.max_steps=3", nproc=2)
    before, after = [e["norm"] for e in events(ft, "backbone")]
    assert before != pytest.approx(after, rel=1e-6)
    saved = torch.load(ft / "backbone_final.bin", map_location="cpu")
    assert saved["model.embed_tokens.weight"].shape[1] == 32
    assert "lm_head.weight" not in saved or torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    assert events(ft, "eval")[-1]["num_examples"] == 16


def test_prompt_tuning_and_ptuning_train_on_a_causal_backbone(tmp_path):
    for name, overrides in (("pt", ["prompt.method=prompt_tuning", "prompt.num_prompts=1", "prompt.prompt_length=8"]),
                            ("ptuning", ["prompt.method=ptuning", "prompt.num_prompts=1", "prompt.ptuning_hidden=16"])):
        run_trainer(tmp_path / name, *CAUSAL, *overrides, "train.max_steps=3", "eval.mode=rank")
        assert len(losses(tmp_path / name)) == 3 and events(tmp_path / name, "eval")[-1]["num_examples"] == 16


def test_the_causal_preset_trains_smop_on_two_ranks_and_prints_the_result_block(tmp_path):
    """configs/tiny_causal.yaml under the deepspeed launcher, shortened: the quickstart's result block (per
    sub-task exact match, the clean routing table, the pictures) from the default router on the shipped Llama."""
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "trainer/main.py",
                           "--config", "configs/tiny_causal.yaml", "train.max_steps=40", "train.eval_every=0",
                           "data.max_eval_examples=12", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "backbone tiny-pretrained-causal: 127,104 params | smop: 4 x 5 prompts" in out and "ZeRO stage 3" in out
    assert "eval at step 40: jsonl:copy/exact_match" in out and ", average " in out
    assert "routing table (share of each task's val examples per prompt):" in out
    assert f"pictures: {tmp_path / 'plots'}/ (loss_lr.png, routing.png, routing_tables.png, eval.png, step_times.png)" in out
    final = events(tmp_path, "eval")[-1]
    assert set(final["routing_table"]) == set(MIXTURE.split(","))
    assert final["routing_entropy"] > 0.5  # the centred k-means router starts the sub-tasks apart
