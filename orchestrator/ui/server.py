"""The dashboard's web server: a Flask app on 127.0.0.1, read-only, behind a random token.

Access: the URL ``orch ui`` prints carries the token once (``/?token=…``); the server
answers it with a cookie (HttpOnly, SameSite=Strict, named after the port so that two
dashboards do not overwrite each other's) and redirects to the same page without the
token, so that it does not stay in the address bar or the history. Any request without
the cookie or the token, or addressed to another host name than 127.0.0.1/localhost on
this port (DNS rebinding), gets 403. Every page is a GET; nothing is changed.

Untrusted text: Jinja autoescapes every value (no template marks job or remote text
safe), and a ``finalize`` hook strips control characters from every value before that
(``without_controls``). Responses carry a strict Content-Security-Policy (scripts and
styles from this server only, no inline script), and a job's output files are served
as downloads except raster images, with ``nosniff``.
"""

from __future__ import annotations

import hmac
import re
import secrets
import signal
import socket
import threading
import time
import webbrowser
from typing import TYPE_CHECKING, Callable

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file, url_for
from markupsafe import Markup

from ..cli.common import strip_controls
from ..errors import NotFoundError
from . import pages

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App


CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: A job's file on its own: the browser's image viewer styles itself inline; nothing runs.
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
REFRESH_SECONDS = 5
#: How long the platforms page keeps an `orch doctor` checklist before running it again.
HEALTH_SECONDS = 60


def without_controls(value: object) -> object:
    """Every rendered value without control characters (markup the templates built stays):
    the one rule the terminal uses too (cli.common.strip_controls)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return strip_controls(value, keep_newlines=True)
    return value


def create(app: App, token: str, port: int) -> Flask:
    """The Flask app serving ``app``'s store; ``token`` is the one way in, ``port`` the
    port it is reached on (for the Host check and the cookie's name)."""
    web = Flask(__name__)
    web.jinja_env.autoescape = True
    web.jinja_env.finalize = without_controls
    web.jinja_env.globals.update(refresh=REFRESH_SECONDS, short=lambda s: (s or "")[:8])
    cookie = f"orch_ui_{port}"
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    lock = threading.RLock()  # platform objects are made on first use and are not shared safely

    @web.before_request
    def guard():
        if request.host not in hosts:
            abort(403)
        given = request.args.get("token")
        if given is not None:
            if not hmac.compare_digest(given, token):
                abort(403)
            args = {k: v for k, v in request.args.items() if k != "token"}
            resp = redirect(url_for(request.endpoint, **(request.view_args or {}), **args)
                            if request.endpoint else "/")
            resp.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
            return resp
        if not hmac.compare_digest(request.cookies.get(cookie, ""), token):
            return Response(render_template("denied.html"), status=403)
        return None

    @web.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @web.errorhandler(NotFoundError)
    def not_found(exc: NotFoundError):
        return Response(render_template("error.html", message=str(exc)), status=404)

    def page(template: str, **data) -> str:
        """The whole page, or only its live part when the page's script asks for a refresh."""
        layout = "bare.html" if request.headers.get("X-Orch-Partial") else "base.html"
        return render_template(template, layout=layout, **data)

    @web.get("/")
    def queue():
        return page("queue.html", nav="queue", **pages.queue(app, pages.Filters.from_args(request.args)))

    @web.get("/jobs/<job_id>")
    def job(job_id: str):
        return page("job.html", nav="queue", **pages.job(app, _job_id(job_id)))

    @web.get("/jobs/<job_id>/log")
    def log(job_id: str):
        with lock:
            doc = pages.log_tail(app, _job_id(job_id))
        doc["text"] = strip_controls(doc["text"], keep_newlines=True)
        doc["problem"] = strip_controls(doc["problem"], keep_newlines=True)
        return jsonify(doc)

    @web.get("/jobs/<job_id>/files/<path:rel>")
    def result_file(job_id: str, rel: str):
        path = pages.result_file(app, _job_id(job_id), rel)
        if path is None:
            abort(404)
        kind = pages.IMAGE_TYPES.get(path.suffix.lower())
        inline = kind is not None and request.args.get("download") is None
        resp = send_file(path, mimetype=kind or "application/octet-stream", as_attachment=not inline,
                         download_name=path.name, conditional=False)
        resp.headers["Content-Security-Policy"] = FILE_CSP
        return resp

    @web.get("/quota")
    def quota():
        return page("quota.html", nav="quota", **pages.quota(app))

    health: dict = {"at": 0.0, "checks": None}

    @web.get("/platforms")
    def platforms():
        with lock:
            data = pages.platforms(app)
            if time.time() - health["at"] > HEALTH_SECONDS:  # doctor reads live quotas: not on every view
                health.update(checks=pages.health(app), at=time.time())
        return page("platforms.html", nav="platforms", health=health["checks"], **data)

    def _job_id(ref: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", ref):
            raise NotFoundError(f"no job {ref[:40]}")
        return ref

    return web


def serve(app: App, port: int = 0, open_browser: bool = False, echo: Callable[[str], None] = print) -> None:
    """Serve the dashboard on 127.0.0.1 until Ctrl-C; prints the one URL that gets in."""
    from werkzeug.serving import make_server

    from ..errors import UsageError

    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # bound here, not by werkzeug, which exits the process on a port in use
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
                         "pick another port, or --port 0 for any free one") from None
    bound = sock.getsockname()[1]
    server = make_server("127.0.0.1", bound, create(app, token, bound), threaded=True, fd=sock.fileno())
    url = f"http://127.0.0.1:{bound}/?token={token}"
    # Ctrl-C (and a plain kill) stop it cleanly, from the moment the URL is out, even where
    # SIGINT was inherited ignored (a shell's background job).
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo(f"orch ui: {url}")
        echo("read-only dashboard on this machine only; the token in the URL is the one way in; Ctrl-C stops it")
        if open_browser:
            webbrowser.open(url)
        server.serve_forever()  # werkzeug's returns on KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("orch ui stopped")


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt
