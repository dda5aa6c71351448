"""The web console (/ui): sessions, charts, templates and static files; its routes are in app/api/console.py."""
