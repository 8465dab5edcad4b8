#!/usr/bin/env bash
# One prepared device check for an H100/H200 machine: at most 8 minutes, wheel install included. Writes
# everything under one directory and prints a short table last (see docs/benchmarks.md, "GPU check").
#
#   tools/gpu_check.sh [--out DIR] [--dry-run] [--size t5-xl] [--arms A,B,...] [--baseline pt-100]
#                      [--causal-size llama-8b] [--causal-arms A,B,...] [--causal-baseline pt-100] [--budget-s 480]
#                      [--wheels DIR] [--train-overrides "key=value ..."] [--pack]
#
# Steps, in order of what they decide, each under its own time limit (cut to what is left of --budget-s):
#   1. install   the wheels in --wheels (.whl/, filled by tools/cluster/gpu_wheels.sh) when DeepSpeed
#                is not importable: the GPU image has torch/transformers/PEFT but no DeepSpeed
#   2. env       versions, devices, memory, bf16 support, nvidia-smi (python -m tools.cluster.gpu_check env)
#   3. bench     python -m tools.bench at --size (T5-XL) with the arms that decide the speed goals: SMoP 4x5,
#                prompt tuning 100, HF+PEFT 100, the bare loop, the replicated backbone (ZeRO-2)
#   4. bench_causal  python -m tools.bench at --causal-size (Llama-3.1-8B's shape, a random Llama) with SMoP 4x5,
#                prompt tuning 100 (the baseline) and HF+PEFT 100 (CAUSAL_LM prompt tuning)
#   5. tests     the GPU-marked tests: python -m pytest -m gpu tests
#   6. train     the embedded default run (trainer/main.py with no preset) in bf16: the default ds_config
#                with bf16.enabled=true, one rank per GPU; --train-overrides adds key=value overrides
#   7. report    DIR/gpu_check.json and the table (DIR/gpu_check.txt), DIR/logs.tar.gz of everything
# The two benches share the budget: T5-XL's five arms up to 190 s, Llama-8B's three (fewer timed steps: its
# steps are 2.5x T5-XL's) up to 150 s, then the tests (100 s) and the run (60 s) get what is left.
# --dry-run runs every step the CPU can run, small: the install into DIR/raw/site (no PYTHONPATH change),
# the GPU tests (they skip), 2 training steps on one rank, the bench arms at tiny and tiny-causal shapes on
# one rank, two at a time.
# tests/tools/test_gpu_check.py runs it, so the script is exercised before any GPU is at hand.
# --pack removes DIR/raw after packing it into logs.tar.gz (for a device tool that returns few files).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A lent machine has the checkout but no `pip install` of it: trainer/main.py (and the tests' subprocesses)
# import the package from here; the tools run as modules (python -m tools.NAME) from here.
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}

out=${OUT:-runs/gpu_check}
dry=0 size=t5-xl arms="smop-4x5,pt-100,hf-peft-100,bare,smop-4x5-zero2" budget=480 wheels=.whl
train_overrides="" pack=0 baseline=pt-100 causal_size=llama-8b causal_arms="smop-4x5,pt-100,hf-peft-100"
causal_baseline=pt-100
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --size) size=$2; shift 2 ;;
    --arms) arms=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --causal-size) causal_size=$2; shift 2 ;;
    --causal-arms) causal_arms=$2; shift 2 ;;
    --causal-baseline) causal_baseline=$2; shift 2 ;;
    --budget-s) budget=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --train-overrides) train_overrides=$2; shift 2 ;;
    --pack) pack=1; shift ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: tools/gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$budget" in ''|*[!0-9]*) echo "error: tools/gpu_check.sh: --budget-s '$budget' is not a whole number of seconds" >&2; exit 2 ;; esac
mkdir -p "$out/raw" || { echo "error: tools/gpu_check.sh: cannot create --out '$out'" >&2; exit 2; }
out=$(cd "$out" && pwd)
raw=$out/raw
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=python3
start=$SECONDS
steps_file=$raw/steps.jsonl
: > "$steps_file"

left() { echo $(( budget - (SECONDS - start) )); }

# run_step NAME LIMIT_S CMD...: run CMD with its output in raw/NAME.log, limited to LIMIT_S or what is left.
run_step() {
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -le 5 ]; then
    echo "{\"step\": \"$name\", \"status\": \"skipped\", \"seconds\": 0, \"why\": \"budget spent\"}" >> "$steps_file"
    echo "[gpu_check] $name: skipped (budget spent)" >&2
    return
  fi
  echo "[gpu_check] $name (limit ${limit} s) ..." >&2
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$raw/$name.log" 2>&1
  rc=$?
  local status=ok
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  echo "{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( SECONDS - t0 )), \"limit_s\": $limit}" >> "$steps_file"
  echo "[gpu_check] $name: $status ($(( SECONDS - t0 )) s)" >&2
  tail -n 3 "$raw/$name.log" | sed 's/^/    /' >&2
}

# 1. install: the image lacks DeepSpeed; our wheels go to a --target directory put on PYTHONPATH.
install_wheels() {
  shopt -s nullglob
  local found=("$wheels"/*.whl)
  shopt -u nullglob
  if [ ${#found[@]} -eq 0 ]; then
    echo "no wheels in '$wheels' (fill it with: bash tools/cluster/gpu_wheels.sh)"
    [ $dry -eq 1 ] && return 0
    $py -c "import deepspeed" 2>/dev/null && { echo "deepspeed importable: nothing to install"; return 0; }
    return 1
  fi
  local target=/tmp/site
  if [ $dry -eq 1 ]; then
    target=$raw/site  # exercise the install without changing the environment the other steps use
  elif $py -c "import deepspeed" 2>/dev/null; then
    echo "deepspeed importable: nothing to install"
    return 0
  fi
  $py -m pip install -q --no-index --no-deps --no-compile --target "$target" "${found[@]}" || return 1
  local installed; installed=$(ls -d "$target"/*.dist-info 2>/dev/null | wc -l)
  echo "installed ${#found[@]} wheels into $target ($installed dist-info directories)"
  [ "$installed" -ge ${#found[@]} ] || { echo "error: fewer packages installed than wheels given"; return 1; }
  [ $dry -eq 1 ] && return 0
  export PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH}
  echo "$target" > "$raw/pythonpath"
  $py -c "import deepspeed; print('deepspeed', deepspeed.__version__)"
}
echo "[gpu_check] install ..." >&2
t0=$SECONDS
install_wheels > "$raw/install.log" 2>&1
rc=$?
status=ok; [ $rc -ne 0 ] && status=failed
echo "{\"step\": \"install\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( SECONDS - t0 ))}" >> "$steps_file"
echo "[gpu_check] install: $status" >&2
sed 's/^/    /' "$raw/install.log" | tail -n 3 >&2
[ -f "$raw/pythonpath" ] && export PYTHONPATH=$(cat "$raw/pythonpath")${PYTHONPATH:+:$PYTHONPATH}

# 2. env
run_step env 60 $py -m tools.cluster.gpu_check env "$raw/env.json"

# 3-4. the speed goals' arms, on T5 and on a causal LM (dry run: tiny and tiny-causal shapes, one rank, two
#    timed steps, two arms at a time: it checks that every arm runs, not what the shared CPU measures)
if [ $dry -eq 1 ]; then
  small=(--nproc 1 --seq-len 16 --target-len 4 --micro-batch 2 --warmup 1 --steps 2 --phase-steps 1
         --infer-repeats 1 --gen-tokens 2 --arm-timeout 60 --jobs 2)
  bench_args=(--size tiny "${small[@]}") causal_args=(--size tiny-causal "${small[@]}")
else
  bench_args=(--size "$size" --warmup 3 --steps 10 --phase-steps 2 --infer-repeats 2 --arm-timeout 120)
  causal_args=(--size "$causal_size" --warmup 2 --steps 6 --phase-steps 1 --infer-repeats 2 --arm-timeout 120)
fi
run_step bench $([ $dry -eq 1 ] && echo 500 || echo 190) $py -m tools.bench "${bench_args[@]}" --arms "$arms" --baseline "$baseline" --out "$raw/bench"
run_step bench_causal $([ $dry -eq 1 ] && echo 300 || echo 150) $py -m tools.bench "${causal_args[@]}" --arms "$causal_arms" --baseline "$causal_baseline" --out "$raw/bench_causal"

# 5. the GPU-marked tests (on the CPU they skip: the dry run checks that they are collected and skip cleanly)
run_step tests $([ $dry -eq 1 ] && echo 120 || echo 100) \
  $py -m pytest -q -m gpu tests -rs -p no:cacheprovider --junitxml "$raw/tests.xml"

# 6. the embedded default in bf16 on every GPU (dry run: 2 steps, one rank, on the CPU)
$py -m tools.cluster.gpu_check train-ds-config "$raw/train_ds_config.json" > "$raw/train_ds_config.log" 2>&1
nproc=$($py -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
train_small=""
[ $dry -eq 1 ] && { nproc=1; train_small="train.max_steps=2 train.eval_every=0 data.max_eval_examples=16 eval.batch_size=8"; }
# A port free now (trainer.runtime.distributed.free_port's recipe, without importing DeepSpeed for it).
port=$($py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086  # overrides are whitespace-separated key=value words
run_step train 60 $py -m torch.distributed.run --nproc_per_node "$nproc" --master_port "$port" \
  trainer/main.py "ds_config=$raw/train_ds_config.json" "output_dir=$raw/train" overwrite=true $train_small $train_overrides

# 7. report
$py -m tools.cluster.gpu_check report "$out" --dry-run "$dry" --size "$size" --causal-size "$causal_size" \
  --budget-s "$budget" | tee "$out/gpu_check.txt"
rc=${PIPESTATUS[0]}
tar -czf "$out/logs.tar.gz" -C "$out" raw
[ $pack -eq 1 ] && rm -rf "$raw"
exit "$rc"
