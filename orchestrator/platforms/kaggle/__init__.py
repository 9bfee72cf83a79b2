"""The ``kaggle`` platform: Kaggle kernels through the ``kaggle`` client
(docs/platforms/kaggle.md). ``client`` is the API edge, ``credentials`` finds the API key,
``transfer`` moves datasets and outputs, ``script`` renders the kernel's bootstrap script.
"""
