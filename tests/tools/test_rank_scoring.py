"""tools/bench/rank_scoring.py at a tiny size: both scoring paths agree (it checks before timing) and every row
has its figures."""
import json

from tools.bench import rank_scoring


def test_rank_scoring_benchmark_runs_and_reports_both_paths(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert rank_scoring.main(["--lengths", "8", "24", "--candidates", "2", "3", "--batch", "4", "--repeats", "1",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["input_tokens"], r["candidates"]) for r in rows] == [(8, 2), (8, 3), (24, 2), (24, 3)]
    for r in rows:
        assert r["prefix_cached_ms"] > 0 and r["rerun_ms"] > 0
        assert abs(r["rerun_over_cached"] - r["rerun_ms"] / r["prefix_cached_ms"]) < 0.01
    assert "re-run / cached" in capsys.readouterr().out
