"""The methods: what trains in the prompt slot (registry.py says what a method is to the trainer).

Importing the package registers the shipped methods (builtin.py), so they always come first and a plug-in can
never take their names; the registry itself imports no method.
"""
from trainer.methods import builtin  # noqa: F401  (registers smop, prompt_tuning, ptuning, iapt, full_finetune)
