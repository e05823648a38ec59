"""The firmware's error with a numeric code, named by the module that raises it."""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class CodedError(Exception):
    """``code`` indexes the subclass's ``NAMES``; ``detail`` says what exactly happened."""

    NAMES: "ClassVar[tuple[str, ...]]" = ()

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        names = self.NAMES
        name = names[self.code] if 0 < self.code < len(names) else str(self.code)
        return name + ": " + self.detail if self.detail else name
