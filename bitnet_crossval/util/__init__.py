"""Tools every job uses: the one subprocess runner (``proc``), terminal output (``ui``), files that are
never half-written and the one translation of OSError (``files``), network retries (``retry``), numbers
from environment variables (``envnum``), time stamps (``timefmt``), and microsoft/BitNet's I2_S tensor
format (``i2s``), which the engine and the float copy of a model both read.
"""
