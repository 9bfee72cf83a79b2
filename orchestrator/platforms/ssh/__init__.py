"""The ``ssh`` platform: any machine orch reaches over SSH (docs/platforms/ssh.md).

``platform`` is the backend; ``connection`` the paramiko layer (deadlines, pinned host
keys), ``sftp`` its verified transfers, ``shell`` the quoting of remote commands,
``link`` reconnection, ``runs`` detached runs, ``proxy`` and ``hostkeys`` their helpers.
"""
