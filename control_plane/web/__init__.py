"""The control plane's HTTP side: /metrics, /healthz and the read-only web dashboard with
its JSON API (issue 9).

`make_app` builds the routes over the same stores, scheduler, session hub and `Access` the
gRPC servicers use (server.py hands them in as `WebSources`); `start_http` serves them on
the control plane's own event loop. The page is plain HTML, CSS and JavaScript in
`static/`, shipped as package data.
"""

from control_plane.web.app import WebSources, make_app
from control_plane.web.serving import HttpListenError, HttpServer, start_http, tls_context

__all__ = [
    "HttpListenError",
    "HttpServer",
    "WebSources",
    "make_app",
    "start_http",
    "tls_context",
]
