"""Getting a backend: its source (``sources``), the CMake build (``cmake``), how each backend is
configured and laid out (``recipes``, ``bitnet_build``), the install into the cache (``install``), and the
shell lines that point a shell at it (``emit``).
"""
