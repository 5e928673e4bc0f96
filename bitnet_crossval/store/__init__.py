"""Everything under the cache root: its layout (every path is made in ``layout``), the install marker
(``marker``), the constants file (``constants``) and the file locks (``lock``).
"""
