"""``orch ui``: a read-only web dashboard of the queue, quotas, attempts and results.

``server.py`` is the Flask app (token, headers, routes), ``pages.py`` reads what each page
shows through the library, ``templates/`` and ``static/`` (in the package: no CDN, no
network) render it. Needs the ``ui`` extra (Flask).
"""
