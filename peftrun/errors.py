"""The one exception type for user-facing errors: one line that names the problem and the fix."""


class PeftrunError(Exception):
    """Bad input (config, data, files, network). The CLI prints it as one line and exits 2."""
