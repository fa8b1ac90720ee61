"""The exception type for user mistakes (launch.py prints its message as one line, status 2)."""


class UserError(ValueError):
  """A mistake in the flags, the config or the input files; the message says how to fix it."""
