"""Attendance protocol v1: runtime-neutral code shared by the reader firmware and the gateway.

Everything in this package except ``construct_codec`` runs unchanged on MicroPython and CPython.
"""
