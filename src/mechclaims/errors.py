"""The errors mechclaims raises for bad input.  Each message is one line that
names the bad value, the valid choices and the fix."""


class MechclaimsError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class TargetError(MechclaimsError):
    """A model target cannot be resolved or loaded."""


class ConfigError(MechclaimsError):
    """An option, setting or expectation is invalid."""
