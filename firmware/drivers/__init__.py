"""Card reader drivers: each exposes tech, uid, fault and poll(now_ms); hardware is injected."""
