"""The one exception type for user-facing errors: one line that names the problem and the fix."""


class PeftrunError(Exception):
    """Bad input (config, data, files, network). The CLI prints it as one line and exits 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
