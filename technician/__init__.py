"""Technician tools, installed as console scripts (attendance-card, and later provisioning)."""
