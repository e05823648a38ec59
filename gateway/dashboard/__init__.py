"""The operations dashboard served by the gateway (docs/dashboard.md).

One module per concern: ``app`` (the aiohttp application, middlewares, the service),
``routes`` (pages and actions), ``auth`` (users, passwords, sessions, CSRF, login rate limit),
``live`` (server-sent live taps), ``views`` (queries the reports module lacks, actions),
``charts`` (inline SVG), ``pages`` and ``html`` (the HTML), ``i18n`` (Vietnamese and English),
``store`` (its database connections), ``static/`` (one stylesheet, one small script).
"""
