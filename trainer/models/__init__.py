"""The backbone families behind one interface: where the prompts go and how the loss, candidate scores and
generation are computed (docs/method.md §1 for T5, §10 for decoder-only LMs).

- seq2seq.py: encoder-decoder (T5): prompts before the encoder input; the decoder is untouched.
- causal.py: decoder-only LMs (Llama, Qwen2, Mistral, Gemma): one sequence [prompt ; input ; target].
- family.py: which family a backbone is, and what of its structure a method may hook into.
- prompted.py: `PromptedModel`, a backbone plus the method in its prompt slot, run through its family.

A family is a namespace of functions that take the backbone and a `PromptFn` (the method's prompts for the
batch's inputs), so the trainer's method and smop-predict's mixed adapters run through the same code.
"""
