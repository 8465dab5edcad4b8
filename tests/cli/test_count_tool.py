"""trainer/cli/count.py: the paper's parameter figures and the FLOP comparison, computed without weights."""
import re

import pytest

from trainer.cli import count
from trainer.methods.iapt import num_params
from trainer.perf.flops import method_flops
from trainer.perf.shapes import CAUSAL_SHAPES


def test_parameter_and_flop_tables(capsys):
    count.main(["--source-lens", "128", "256"])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():  # the parameter table comes first
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "| SMoP 4x5 | 18,432 | 24,576 | 49,152 | 98,304 |" in out
    assert "| prompt tuning 20 | 15,360 | 20,480 |" in rows["prompt tuning 20"]
    # T5 v1.1 large (lm-adapt): 783M parameters with its untied output layer.
    assert "| 783,150,080 |" in rows["full fine-tuning"]
    changes = re.findall(r"SMoP 4x5 vs prompt tuning 100 \| ([^|]+) \| ([^|]+) \|", out)
    assert len(changes) == 4
    for short, long in changes:  # fewer encoder positions always save, and save less on longer inputs
        assert float(short.strip().rstrip("%")) < float(long.strip().rstrip("%")) < 0


def test_causal_family_tables(capsys):
    """--family causal: one column per CAUSAL_SHAPES entry, the prompts' parameters at the model's width, the
    whole model for full fine-tuning, and the causal FLOP count (prompt + input + target in one sequence)."""
    count.main(["--family", "causal", "--source-lens", "128", "512", "--target-len", "2"])
    out = capsys.readouterr().out
    params = out.split("## Inference")[0]
    header = next(line for line in params.splitlines() if line.startswith("| method |"))
    assert [c.strip() for c in header.split("|")[2:-1]] == list(CAUSAL_SHAPES)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in params.splitlines() if line.startswith("| ") and not line.startswith("| method")}
    widths = [s.hidden_size for s in CAUSAL_SHAPES.values()]
    assert rows["SMoP 4x5"] == [f"{d * (4 * 5 + 4):,}" for d in widths]  # k x l x d prompts + d x k router
    assert rows["prompt tuning 100"][1] == "409,600"  # Llama-3.1-8B: 100 x 4096
    assert rows["IAPT m=32"] == [f"{num_params(s.hidden_size, s.num_layers):,}" for s in CAUSAL_SHAPES.values()]
    assert rows["full fine-tuning"][1] == "8,030,261,248"  # Llama-3.1-8B, untied output layer
    assert rows["full fine-tuning"][0] == "1,235,814,400"  # Llama-3.2-1B, tied
    llama = out.split("### llama-3.1-8b")[1].split("###")[0]
    smop = next(line for line in llama.splitlines() if line.startswith("| SMoP 4x5 |"))
    expected = [method_flops("smop", CAUSAL_SHAPES["llama-3.1-8b"], s, 2, 4, 5) / 1e9 for s in (128, 512)]
    assert smop == "| SMoP 4x5 | " + " | ".join(f"{f:.2f}" for f in expected) + " |"
    changes = re.findall(r"SMoP 4x5 vs prompt tuning 100 \| ([^|]+) \| ([^|]+) \|", out)
    assert len(changes) == len(CAUSAL_SHAPES)
    for short, long in changes:  # fewer positions always save, and save less on longer inputs
        assert float(short.strip().rstrip("%")) < float(long.strip().rstrip("%")) < 0


def test_unknown_family_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        count.main(["--family", "encoder"])
    assert e.value.code == 2 and "invalid choice: 'encoder'" in capsys.readouterr().err
