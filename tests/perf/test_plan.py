"""The traffic model (trainer/perf/traffic.py) against measurement, and the placement predictions (trainer/perf/plan.py)."""
import json

import pytest
from transformers import T5Config, T5ForConditionalGeneration

from tests.launch import REPO
from tools.bench.comm_volume import measure
from trainer.cli.plan import MODELS
from trainer.perf.plan import Hardware, Workload, model_states, notice, predict
from trainer.perf.shapes import T5Shape
from trainer.perf.traffic import backbone_numels

GiB = 2**30


# Untied configs are left out: transformers 5.23 then builds separate encoder/decoder embedding matrices
# besides `shared` (docs/benchmarks.md, "What the model leaves out").
@pytest.mark.parametrize("tied,gated", [(True, True), (True, False)])
def test_weight_list_is_the_real_t5s(tied, gated):
    cfg = T5Config(vocab_size=101, d_model=32, d_ff=48, d_kv=8, num_heads=2, num_layers=3, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu" if gated else "relu")
    cfg.tie_word_embeddings = tied  # set after: the constructor's keyword is overridden (transformers 5.23)
    model = T5ForConditionalGeneration(cfg)
    assert sorted(backbone_numels(T5Shape.from_config(cfg), tied).values()) == \
        sorted(p.numel() for p in model.parameters())


@pytest.mark.multiprocess
def test_zero3_traffic_model_matches_two_rank_measurement(tmp_path):
    """Every weight use released at once (reuse distance and prefetch 0), two micro batches: the model must
    get each gather of the forward, of the backward and of the shared embedding right, within 10%."""
    ds = json.loads((REPO / "ds_configs" / "cpu_zero3.json").read_text())
    ds["zero_optimization"].update(stage3_max_reuse_distance=0, stage3_prefetch_bucket_size=0)
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    got = measure("zero3", 2, tmp_path, accum=2, ds_config=str(tmp_path / "ds.json"))
    assert got["ops"]["all_gather_into_tensor/2 ranks"]["calls"] > 100  # per module, not one bulk gather
    assert abs(got["model"] / got["measured_received"] - 1) <= 0.10, got


def _workload(model: str, micro: int = 8) -> Workload:
    shape = MODELS[model][0]
    return Workload(shape, False, 2, 4 * 5 * shape.d_model + 4 * shape.d_model, 512, 8, 5, micro, 1)


def test_notice_names_the_faster_placement_that_fits():
    w = _workload("t5-xl")
    slow_network = Hardware(80 * GiB, 1, 8, 100)  # 8 nodes of one GPU at 100 Gbit/s
    line = notice("zero3", predict(w, slow_network), slow_network.device_memory)
    assert line.startswith("placement: zero3 is predicted") and "replicated" in line and "zero2_bf16.json" in line
    assert notice("replicated", predict(w, slow_network), slow_network.device_memory) is None
    # Small GPUs: replicated XXL does not fit, hpZ does and keeps the gathers inside the node.
    xxl, small = _workload("t5-xxl"), Hardware(32 * GiB, 4, 2, 100)
    predictions = {p.placement: p for p in predict(xxl, small)}
    assert not predictions["replicated"].fits and predictions["zero3_hpz"].fits
    line = notice("zero3", list(predictions.values()), small.device_memory)
    assert "zero3_hpz" in line and "zero_hpz_partition_size=4" in line
    # Nothing that fits is faster: no line.
    tiny_gpus = Hardware(24 * GiB, 4, 2, 100)
    assert notice("zero3", predict(xxl, tiny_gpus), tiny_gpus.device_memory) is None


def test_memory_from_deepspeeds_estimators_orders_the_placements():
    w, hw = _workload("t5-xl"), Hardware(80 * GiB, 4, 2, 100)
    total = sum(backbone_numels(w.shape, False).values())
    replicated, zero3, hpz = (model_states(p, w, hw) for p in ("replicated", "zero3", "zero3_hpz"))
    assert zero3 < hpz < replicated
    assert 2 * total <= replicated < 2 * total * 1.01  # the bf16 weights, and no optimiser state for them
    assert zero3 < 2 * total / hw.ranks + 5 * max(backbone_numels(w.shape, False).values())
