"""The one-line config error and the two checks every validation is written with (the package's own and a
method's `validate`)."""


class ConfigError(ValueError):
  """A config value that cannot run; the message is one line naming the key."""


def require(ok: bool, message: str):
  """Raises ConfigError(message) unless `ok`."""
  if not ok:
    raise ConfigError(message)


def choice(key: str, value, allowed):
  require(value in allowed, f'{key}={value!r} is not allowed; allowed: {", ".join(allowed)}')
