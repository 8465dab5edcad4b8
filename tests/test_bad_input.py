"""Bad input fails before any work: one line naming the file/line/key, exit code 2, nothing overwritten.

Most cases call the real readers in-process (read_inputs, load_config, the ds_config and batch owners);
a few run the entry point to check the exit code and that the output_dir is left as it was.
"""
import json
import shutil
from pathlib import Path

import pytest

from tests.launch import run_trainer
from trainer.runtime.checkpoint import locate
from trainer.config import load_config
from trainer.paths import EMBEDDED_DATA_DIR
from trainer.data.batch import encode
from trainer.runtime.ds_config import load_ds_config, merge_batch, resolve_batch
from trainer.main import read_inputs
from trainer.data.readers import load_split
from trainer.data.tasks import get_task


@pytest.fixture
def data_dir(tmp_path):
    """A writable copy of the embedded RTE data, small enough to rewrite per test."""
    target = tmp_path / "data"
    shutil.copytree(EMBEDDED_DATA_DIR, target)
    return target


def one_line_error(call, *needles) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def inputs(tmp_path, data_dir, *overrides):
    return lambda: read_inputs(None, [f"output_dir={tmp_path / 'out'}", f"data.data_dir={data_dir}", "data.task=rte",
                                      *overrides])


def rewrite_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


# --- data -----------------------------------------------------------------------------------------------

def test_malformed_jsonl_line(tmp_path, data_dir):
    rewrite_line(data_dir / "RTE" / "train.jsonl", 3, '{"premise": "a", "hypothesis": ')
    one_line_error(inputs(tmp_path, data_dir), "RTE/train.jsonl:3:", "not valid JSON")
    assert not (tmp_path / "out").exists()  # nothing was created for a run that could not start


def test_missing_field(tmp_path, data_dir):
    rewrite_line(data_dir / "RTE" / "val.jsonl", 2, json.dumps({"premise": "a", "label": "entailment", "idx": 1}))
    one_line_error(inputs(tmp_path, data_dir), "RTE/val.jsonl:2:", "missing field 'hypothesis'")


def test_label_outside_label_set(tmp_path, data_dir):
    record = {"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 0}
    rewrite_line(data_dir / "RTE" / "train.jsonl", 5, json.dumps(record))
    one_line_error(inputs(tmp_path, data_dir), "RTE/train.jsonl:5:", "'maybe'", "not allowed")


def test_empty_data_file(tmp_path, data_dir):
    (data_dir / "RTE" / "val.jsonl").write_text("\n\n")
    one_line_error(inputs(tmp_path, data_dir), "RTE/val.jsonl", "no records")


def test_non_utf8_bytes(tmp_path, data_dir):
    path = data_dir / "RTE" / "train.jsonl"
    path.write_bytes(path.read_bytes().replace(b"radio", b"r\xff\xfedio", 1))
    one_line_error(inputs(tmp_path, data_dir), "RTE/train.jsonl:1:", "not UTF-8")


def test_missing_data_file(tmp_path, data_dir):
    (data_dir / "RTE" / "val.jsonl").unlink()
    one_line_error(inputs(tmp_path, data_dir), "RTE/val.jsonl", "cannot read", "data.data_dir")


def test_unknown_task(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, "data.task=rtee"), "unknown task 'rtee'", "boolq")


def test_unknown_split(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, "data.eval_split=dev"), "unknown split 'dev'")


def test_long_inputs_truncated_and_counted_not_an_error():
    examples = load_split(get_task("rte"), EMBEDDED_DATA_DIR, "val")[:6]

    class Words:  # one id per word, </s> = 1: the arithmetic of truncation is visible
        eos_token_id = 1

        def __call__(self, texts, add_special_tokens=False):
            return type("T", (), {"input_ids": [[5 + i for i, _ in enumerate(t.split())] for t in texts]})

    encoded = encode(examples, [0] * 6, Words(), max_source_length=9, prompt_length=5, max_target_length=4)
    lengths = [len(ex.input.split()) for ex in examples]
    assert encoded.truncated == sum(n > 3 for n in lengths) > 0
    assert all(len(ids) <= 4 and ids[-1] == 1 for ids in encoded.input_ids)  # l + input + </s> fits 9


# --- config and overrides -------------------------------------------------------------------------------

@pytest.mark.parametrize("override, needles", [
    ("train.lrr=0.1", ["command line", "unknown config key 'train.lrr'", "known in train"]),
    ("trian.lr=0.1", ["unknown config key 'trian.lr'"]),
    ("train.max_steps=ten", ["train.max_steps: expected int", "'ten'"]),
    ("train.max_steps=2.5", ["train.max_steps: expected int"]),
    ("overwrite=maybe", ["overwrite: expected bool"]),
    ("prompt.routing=best", ["prompt.routing: 'best' is not one of", "smop"]),
    ("train.lr", ["override 'train.lr' is not key=value"]),
    ("train=3", ["'train' is a section"]),
    ("train.lr=-1", ["train.lr=-1.0: must not be negative"]),
    ("prompt.top_k=9", ["prompt.top_k=9"]),
    ("collective_timeout_s=0", ["collective_timeout_s=0.0: must be positive"]),
    ("checkpoint.keep=0", ["checkpoint.keep=0: must be at least 1"]),
])
def test_bad_override(override, needles):
    extra = ["prompt.routing=topk"] if override.startswith("prompt.top_k") else []
    one_line_error(lambda: load_config(None, extra + [override]), *needles)


def test_float_override_in_exponent_notation_is_a_float():
    assert load_config(None, ["train.lr=1e30"]).train.lr == 1e30  # YAML 1.1 alone reads '1e30' as a string


def test_preset_not_yaml_and_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [0.3\n")
    one_line_error(lambda: load_config(str(bad), []), "bad.yaml", "cannot read preset")
    one_line_error(lambda: load_config(str(tmp_path / "none.yaml"), []), "none.yaml", "cannot read preset")


# --- ds_config and batch arithmetic ---------------------------------------------------------------------

def test_ds_config_not_json(tmp_path, data_dir):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "zero_optimization": {"stage": 3,}\n}\n')
    one_line_error(inputs(tmp_path, data_dir, f"ds_config={path}"), f"{path}:2:", "not valid JSON")


def test_ds_config_missing(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, f"ds_config={tmp_path}/nope.json"), "ds_config: cannot read", "nope.json")


def test_ds_config_fp16_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"fp16": {"enabled": True}}))
    one_line_error(lambda: load_ds_config(str(path)), "fp16.enabled is true", "bf16")


def test_ds_config_contradicts_trainer_batch(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}}))
    cfg = load_config(None, ["train.micro_batch_size=4"])
    one_line_error(lambda: merge_batch(load_ds_config(str(path)), resolve_batch(cfg.train, 2), str(path)),
                   "train_micro_batch_size_per_gpu=2 contradicts the run config, which gives 4")


def test_batch_arithmetic_that_does_not_divide():
    cfg = load_config(None, ["train.global_batch_size=6", "train.micro_batch_size=4"])
    one_line_error(lambda: resolve_batch(cfg.train, 1), "train.global_batch_size=6", "4 x 1")


# --- model, tokenizer, output_dir, checkpoints ----------------------------------------------------------

def test_missing_model_path(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, f"model.name_or_path={tmp_path}/no-model"),
                   "model.name_or_path: no such directory", "no-model")


def test_missing_tokenizer(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, f"model.tokenizer={tmp_path}/no-tok"),
                   "model.tokenizer: no such directory", "no-tok")


def test_unwritable_output_dir(tmp_path, data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    call = lambda: read_inputs(None, [f"output_dir={blocker}/out", f"data.data_dir={data_dir}"])  # noqa: E731
    one_line_error(call, "is not writable", "a-file/out")


def test_output_dir_with_a_different_config_refused(tmp_path, data_dir):
    import yaml

    from trainer.config import to_dict

    out = tmp_path / "out"
    out.mkdir()
    before = to_dict(load_config(None, [f"output_dir={out}", f"data.data_dir={data_dir}"]))
    (out / "config.yaml").write_text(yaml.safe_dump(before))
    read_inputs(None, [f"output_dir={out}", f"data.data_dir={data_dir}", "train.log_every=3"])  # free key: fine
    one_line_error(inputs(tmp_path, data_dir, "train.lr=0.1"), "holds a run with a different config",
                   "train.lr: 0.3 -> 0.1", "checkpoint.resume=latest", "overwrite=true")
    read_inputs(None, [f"output_dir={out}", f"data.data_dir={data_dir}", "train.lr=0.1", "checkpoint.resume=fresh"])
    assert yaml.safe_load((out / "config.yaml").read_text()) == before  # read_inputs never writes it


def test_named_checkpoint_that_does_not_exist(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "checkpoint.resume=step-000100"])
    one_line_error(lambda: locate(cfg), "checkpoint.resume: no checkpoint 'step-000100'")
    cfg = load_config(None, [f"output_dir={tmp_path}", "checkpoint.resume=latest"])
    one_line_error(lambda: locate(cfg), "checkpoint.resume=latest: no usable checkpoint")


# --- backbone families -----------------------------------------------------------------------------------

CAUSAL = ["model.name_or_path=tiny-pretrained-causal"]


def test_chat_template_asked_of_a_tokenizer_without_one(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, *CAUSAL, "data.chat_template=true"), "data.chat_template=true",
                   "has no chat template", "tiny-pretrained-causal")
    assert not (tmp_path / "out").exists()


def test_chat_template_with_an_encoder_decoder_backbone(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, "data.chat_template=true"), "data.chat_template=true",
                   "a causal-LM option", "encoder-decoder")


def test_target_longer_than_the_context_window(tmp_path, data_dir):
    """The shipped small Llama has 1024 positions: prompt, input and target must fit in them."""
    one_line_error(inputs(tmp_path, data_dir, *CAUSAL, "data.max_source_length=900", "data.max_target_length=200"),
                   "data.max_target_length=200", "context window of 1024")
    read_inputs(None, [f"output_dir={tmp_path / 'ok'}", f"data.data_dir={data_dir}", "data.task=rte", *CAUSAL,
                       "data.max_source_length=900", "data.max_target_length=100"])  # fits: accepted


def test_a_family_that_contradicts_the_backbone(tmp_path, data_dir):
    one_line_error(inputs(tmp_path, data_dir, *CAUSAL, "model.family=seq2seq"), "model.family=seq2seq",
                   "is causal (LlamaConfig)", "model.family=auto")
    one_line_error(inputs(tmp_path, data_dir, "model.family=causal"), "model.family=causal", "is seq2seq (T5Config)")


# --- the entry point: exit code 2, one line, nothing overwritten ----------------------------------------

@pytest.mark.multiprocess
def test_entry_point_exit_code_and_nothing_overwritten(tmp_path, data_dir):
    out = tmp_path / "run"
    run_trainer(out, "train.max_steps=2", f"data.data_dir={data_dir}", "checkpoint.every=1")
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_trainer(out, "train.max_steps=2", f"data.data_dir={data_dir}", "checkpoint.every=1",
                       "train.lr=0.1", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.lr: 0.3 -> 0.1" in errors[0], proc.stderr[-2000:]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


@pytest.mark.multiprocess
def test_entry_point_causal_context_window_exit_2_nothing_overwritten(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = run_trainer(out, *CAUSAL, "data.max_target_length=600", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.max_target_length=600" in errors[0], proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.multiprocess
def test_entry_point_batch_that_does_not_divide_over_two_ranks(tmp_path):
    proc = run_trainer(tmp_path / "run", "train.global_batch_size=6", "train.micro_batch_size=2", nproc=2,
                       check=False)
    assert "exitcode  : 2" in proc.stderr or proc.returncode == 2, proc.stderr[-2000:]
    assert "error: train.global_batch_size=6 is not a multiple of train.micro_batch_size x world size = 2 x 2" \
        in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
