"""``python -m orchestrator`` = ``orch``."""

from .cli import main

main(prog_name="orch")
