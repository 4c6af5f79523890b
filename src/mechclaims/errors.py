"""The errors mechclaims raises for bad input.  Each message is one line that
names the bad value, the valid choices and the fix."""


class MechclaimsError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class TargetError(MechclaimsError):
    """A model target cannot be resolved or loaded."""


class ConfigError(MechclaimsError):
    """An option, setting or expectation is invalid."""


def did_you_mean(name: str, valid) -> str:
    """``"did you mean 'x'? "`` for the valid choice nearest ``name``, or ``""`` when none is near."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""
