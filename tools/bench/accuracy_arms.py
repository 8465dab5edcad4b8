"""The accuracy benchmark's arms: what each trains and the learning rates its dev sweep tries.

Read by the benchmark (tools/bench/accuracy.py) and by its report (tools/bench/accuracy_report.py).
"""
PROMPT_GRID = (0.03, 0.1, 0.3)
DENSE_GRID = (1e-3, 3e-3, 1e-2)  # P-tuning's MLP and IAPT's generators are ordinary dense layers
SMOP = ["prompt.method=smop", "prompt.num_prompts=4", "prompt.prompt_length=5"]

PAPER_ROUTER = ["prompt.router_init=orthogonal", "train.router_lr=0"]  # orthogonal rows, the shared lr
KMEANS = SMOP + ["prompt.router_input=centered", "prompt.router_init=kmeans", "train.router_lr=0.003"]

# name -> (overrides, learning-rate grid), in the order they run (the targets' arms first; an interrupted
# benchmark has whole arms). Every SMoP arm spells out its router, so a change of the trainer's defaults
# cannot silently change an arm; smop-kmeans is the trainer's default.
ARMS = {
    "smop-kmeans": (KMEANS, PROMPT_GRID),
    "prompt-tuning-5": (["prompt.method=prompt_tuning", "prompt.num_prompts=1", "prompt.prompt_length=5"],
                        PROMPT_GRID),
    "prompt-tuning-20": (["prompt.method=prompt_tuning", "prompt.num_prompts=1", "prompt.prompt_length=20"],
                         PROMPT_GRID),
    "iapt": (["prompt.method=iapt", "prompt.iapt_bottleneck=16"], DENSE_GRID),
    "full-finetune": (["prompt.method=full_finetune"], (1e-4, 3e-4, 1e-3)),
    "smop-paper": (SMOP + ["prompt.router_input=raw", *PAPER_ROUTER], PROMPT_GRID),
    "smop-centered": (SMOP + ["prompt.router_input=centered", *PAPER_ROUTER], PROMPT_GRID),
    "smop-balance": (SMOP + ["prompt.router_input=raw", *PAPER_ROUTER, "prompt.balance_coef=0.01"], PROMPT_GRID),
    "ptuning": (["prompt.method=ptuning", "prompt.num_prompts=1", "prompt.prompt_length=5",
                 "prompt.ptuning_encoder=mlp"], DENSE_GRID),
    "smop-adafactor": (KMEANS + ["train.optimizer=adafactor"], (0.1, 0.3, 1.0)),
}
