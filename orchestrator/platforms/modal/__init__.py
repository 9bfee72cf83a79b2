"""The ``modal`` platform: Modal Sandboxes through the official ``modal`` client
(docs/platforms/modal.md). ``client`` is the edge (version check, deadlines, errors),
``settings`` the config entry and its CPU price, ``platform`` maps attempts onto
sandboxes and one content-addressed volume.
"""
