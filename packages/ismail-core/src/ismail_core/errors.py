"""The one base class of ismail-core's errors."""


class IsmailError(Exception):
    """An error that is the user's to fix (a bad file, flag or value); its message says how.

    Every ismail-core error class derives from it (and keeps a built-in second base such as
    ValueError), so the CLIs report any of them in one line, without a traceback, by catching
    this one class.
    """
