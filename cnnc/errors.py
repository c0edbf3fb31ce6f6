"""The error every stage raises for input the user got wrong (exit code 1).

It lives at the package root so that every stage, the torch-free runtime included, can raise it
without importing any other stage.
"""


class CnncError(Exception):
    """A problem with the user's input: a spec, a data file, a checkpoint, a model, a tensor.

    The message is complete and meant to be printed as it is, without a traceback.
    """


class UsageError(Exception):
    """A command was called wrongly (a missing file, contradictory flags): exit code 2."""


class InternalError(Exception):
    """A bug in cnnc, never the user's input: a checked model that a backend cannot build (exit code 3)."""
