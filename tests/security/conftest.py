"""Fixtures of the security tests: the peers the attacks run against, shared with the
platform tests (the Kaggle emulator, a real sshd; real PostgreSQL comes from the root
conftest)."""

from tests.platforms.conftest import known_hosts, ssh_platform, sshd  # noqa: F401  (fixtures)
from tests.platforms.kaggle.conftest import kaggle_emulator, kaggle_server  # noqa: F401  (fixtures)
