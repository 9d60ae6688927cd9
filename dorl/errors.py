"""The base class of every error that means bad input rather than a bug.

A config, a file, a dataset or a run folder the command cannot work with raises a subclass of
:class:`InputError` naming the file and the problem; the command line reports it in one line and
exits with status 2, having written nothing half.
"""


class InputError(Exception):
    """Bad input: a config, a file, a dataset or a run folder, not a bug."""
