"""The self-repairing preflight (``preflight``), the rebuild of the shims and the constants file
(``rebuild``), and the re-execution of the command in a fresh process (``reexec``, ``guard``).
"""
