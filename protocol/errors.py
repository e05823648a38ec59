"""The error every decoder raises, with the codes of SPEC.md section 11."""


class ProtocolError(ValueError):
    """A message that breaks protocol v1; ``code`` is one of SPEC.md section 11."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return self.code + ": " + self.detail if self.detail else self.code
