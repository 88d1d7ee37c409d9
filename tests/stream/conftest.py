"""Stream fixtures. The helpers live in ``stream_support`` (a module name of its own, so that test
files import them the same way whichever other test folders pytest collects in the same run)."""

from stream_support import contact_series  # noqa: F401  (a fixture)
