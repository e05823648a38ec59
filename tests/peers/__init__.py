"""Real HTTP servers that implement an upstream's contract, for the forwarder tests.

Each peer listens on 127.0.0.1 on a free port, records every request it got, keeps what it
stored (so a test can check "every event exactly once upstream" on the peer's side) and takes
injected faults. ``edfi``: the Ed-Fi ODS/API (OAuth2, upsert by natural key, problem+json).
"""
