"""The assertion the fuzz suites share: a bad argument is refused by name."""

import pytest


def refused(call, name: str, kinds=(TypeError, ValueError)) -> Exception:
    """`call()` must raise one of `kinds` whose message names `name`; returns the error."""
    try:
        call()
    except kinds as err:
        assert name in str(err), f"the error does not name {name!r}: {err}"
        return err
    pytest.fail(f"accepted a bad {name}")
