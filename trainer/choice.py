"""`Choice`: the str enum of every named option (routing variants, prompt inits, optimisers, ...).

Modules take the enum or its value; a bad value fails in one line that lists the known ones.
"""
from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """Subclass with a docstring that starts by naming what is chosen, up to a colon ("routing variant: ...");
    those words name it in the error. `Name("value")` accepts the value itself."""

    @classmethod
    def _missing_(cls, value):
        words = (cls.__doc__ or cls.__name__).split(":")[0].strip().rstrip(".")
        raise ValueError(f"unknown {words} '{value}'; known: {', '.join(c.value for c in cls)}")
