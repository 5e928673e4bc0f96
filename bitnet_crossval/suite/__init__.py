"""Suites of cross-validation cases: a cases file (TOML) expanded into cases, each run as its own
``crossval-per-token`` process, results cached per case key, shards for CI, one report.

- :mod:`.cases` reads and expands a cases file (defaults, a product of lists, explicit cases);
- :mod:`.shard` splits the cases deterministically across CI jobs;
- :mod:`.keys` names each case by everything that determines its result;
- :mod:`.runner` runs the cases as child processes, in parallel within the cores and memory
  (:mod:`.resources`), and keeps finished results in the cache;
- :mod:`.outcome` turns a finished child into a case's outcome, and outcomes into an exit code;
- :mod:`.result` is the suite's JSON document, built from outcomes or merged from shards;
- :mod:`.junit` and :mod:`.table` are its JUnit file and its summary on stderr.
"""

from __future__ import annotations
