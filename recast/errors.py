"""The one base class for errors caused by user input (bad flags, files, names, data).

The `recast` command prints these as a one-line message instead of a traceback; every
such error says what is wrong and what to do about it.
"""


class UserError(ValueError):
  """Bad input from the user; the message names the problem and the fix."""
