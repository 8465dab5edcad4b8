"""torch.compile for the frozen backbone's training steps (`train.compile=true`).

Regional compilation: each transformer block's forward is compiled (T5's encoder and decoder blocks, a
causal LM's layers), not the whole model. Every block runs the same
code, so one compiled graph (forward and backward) serves all blocks of a stack with the same arguments
(block 0, which owns the relative position bias, gets its own); `generate`, `get_input_embeddings` and the
other entry points of the model stay untouched. Only training steps use the compiled forward (the block is
in training mode): evaluation and generation run eagerly, where the growing key/value cache of decoding
would otherwise recompile. Under ZeRO-3 each block is made a DeepSpeed "leaf" module first
(`trainer.runtime.distributed.gather_whole_blocks`), so its parameters are gathered once before the compiled
forward instead of by hooks on every linear layer inside it, which would break the graph at each one.

Dropout inside a compiled block draws from Inductor's random stream, not eager PyTorch's: with dropout on,
a compiled run is as valid as an eager one but not the same run. With dropout off the losses agree to
float rounding (tests/runtime/test_compile.py). See docs/benchmarks.md for what it costs and gains.
"""
from __future__ import annotations

import torch
from torch import nn


def compile_blocks(model: nn.Module, blocks: list[nn.Module], zero3: bool, backend: str = "inductor") -> None:
    """Compile each of `blocks` (the family's repeated blocks, trainer/models/family.py) for training; call
    before DeepSpeed wraps the model."""
    if zero3:
        from trainer.runtime.distributed import gather_whole_blocks

        gather_whole_blocks(model, list({type(b) for b in blocks}))
    for block in blocks:
        eager = block.forward
        # dynamic: padded lengths change from batch to batch and the encoder and decoder blocks share code, so
        # shapes would otherwise recompile the graph (once static, then again dynamic) on the second shape seen.
        compiled = torch.compile(eager, backend=backend, dynamic=True)

        def compiled_forward(*args, _block=block, _eager=eager, _compiled=compiled, **kwargs):
            return (_compiled if _block.training else _eager)(*args, **kwargs)

        compiled_forward.eager = eager  # for side-by-side timing (tools/bench/worker.py)
        block.forward = compiled_forward
