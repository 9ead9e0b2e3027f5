"""The one base class for errors caused by user input (bad flags, files, names, data).

The `recast` command prints these as a one-line message instead of a traceback; every
such error says what is wrong and what to do about it.
"""

# The exit status of a `recast` command that rejected its input (a UserError, bad flags):
# running it again unchanged fails the same way (sweeps do not retry it).
USAGE_EXIT = 2


class UserError(ValueError):
  """Bad input from the user; the message names the problem and the fix."""
