"""The dashboard's page and static files (plain HTML, CSS and JavaScript modules; no build step).

Served by :mod:`lifeline.api.routes_dashboard` at ``/dashboard``; it talks to the same HTTP API as
every other client, logged in with the cookie session (``/auth/cookie/login``).
"""
