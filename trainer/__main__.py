"""`python -m trainer [--config PRESET.yaml] [key=value ...]`: the trainer as a module, for launchers that take
one (`deepspeed --module trainer`, `torchrun -m trainer`) and for the `smop-train` console script. The same run
as `deepspeed trainer/main.py ...`.
"""
from trainer.main import main
from trainer.runtime import distributed


def train() -> None:
    """Train, then end the process the way trainer/main.py does: a console script's `sys.exit(main())` would
    let interpreter teardown run after gloo, which now and then aborts a finished run."""
    distributed.exit_without_teardown(main())


if __name__ == "__main__":
    train()
