"""The one base class of tr-tokenizer's errors."""


class TrTokenizerError(Exception):
    """An error that is the user's to fix (a missing or malformed file, a bad setting).

    Every tr-tokenizer error class derives from it (and keeps a built-in second base such as
    ValueError), so a CLI reports any of them in one line by catching this one class.
    """
