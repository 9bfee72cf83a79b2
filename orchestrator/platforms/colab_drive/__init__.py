"""The ``colab_drive`` platform: Colab through a Google Drive mailbox read by an agent
notebook (docs/platforms/colab_drive.md). ``client`` is the Drive API edge, ``transfer``
its verified transfers, ``mailbox`` the folder protocol, ``notebook`` the agent notebook.
"""
