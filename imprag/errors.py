"""The one exception type the CLI turns into a single clear line (no traceback)."""


class UserError(Exception):
    """Bad input or a bad request from the user: the message names the file/line/flag and the fix."""
