"""The C++ shim: where its sources are (``sources``), building it against a backend (``build``), and
talking to it (``client``).
"""
