"""The operator's commands; each module adds its sub-commands with ``register(subparsers)``."""
