"""orch's ProxyCommand for Colab: ``colab ssh --proxy-mode``, only for a runtime that exists.

``colab ssh --proxy-mode -s NAME`` *creates* NAME (a CPU runtime, billed) when the
CLI's session store has no entry for it, for example after the CLI pruned it on a
listing that lagged. So every connection, reconnects included, goes through this
wrapper: it reads the store and starts the CLI only when NAME is there::

    python proxy.py --store STORE --name NAME -- /path/to/colab --config STORE ssh --proxy-mode -s NAME -i KEY

Otherwise it exits 3 with a line on stderr. Stdlib only: it runs once per connection.
"""

from __future__ import annotations

import json
import os
import sys
import time

MISSING = "orch: no entry for {name} in the colab CLI's session store {store}; not connecting"


def _entries(store: str) -> dict | None:
    for _ in range(5):  # the CLI rewrites the file in place: a read may catch it half-written
        try:
            with open(store) as f:
                data = json.loads(f.read() or "{}")
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            time.sleep(0.1)
    return None


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.stderr.write("usage: proxy.py --store STORE --name NAME -- COLAB ARGS...\n")
        return 2
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
    opts = dict(zip(own[0::2], own[1::2]))
    store, name = opts.get("--store", ""), opts.get("--name", "")
    if store:
        entries = _entries(store)
        if entries is None:
            sys.stderr.write(f"orch: cannot read the colab CLI's session store {store}; not connecting\n")
            return 3
        if name not in entries:
            sys.stderr.write(MISSING.format(name=name, store=store) + "\n")
            return 3
    os.execv(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
