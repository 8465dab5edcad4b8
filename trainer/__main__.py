"""`python -m trainer [--config PRESET.yaml] [key=value ...]`: the trainer as a module, for launchers that take
one (`deepspeed --module trainer`, `torchrun -m trainer`). The same run as `deepspeed trainer/main.py ...`."""
from trainer.main import cli

if __name__ == "__main__":
    cli()
