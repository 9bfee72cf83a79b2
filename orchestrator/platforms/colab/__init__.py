"""The ``colab`` platform: a Colab runtime reached over SSH through Google's ``colab``
CLI (docs/platforms/colab.md). ``cli`` drives the CLI; the rest builds on ``platforms.ssh``.
"""
