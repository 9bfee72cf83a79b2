"""Fixtures of the security tests: the peers the attacks run against (the Kaggle
emulator here; real sshd and PostgreSQL come from their own fixtures)."""

from tests.platforms.kaggle.conftest import kaggle_emulator, kaggle_server  # noqa: F401  (fixtures)
