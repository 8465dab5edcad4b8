"""trainer/cli/count.py: the paper's parameter figures and the FLOP comparison, computed without weights."""
import re

from trainer.cli import count


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
