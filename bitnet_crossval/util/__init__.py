"""Tools every job uses: the one subprocess runner (``proc``), terminal output (``ui``), files that are
never half-written and the one translation of OSError (``files``), network retries (``retry``), numbers
from environment variables (``envnum``) and time stamps (``timefmt``).
"""
