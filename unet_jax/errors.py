"""The one exception type for bad user input; entry points print it as a single line."""


class InputError(ValueError):
  """Bad data, file or configuration; the message says what is wrong and what to do."""
