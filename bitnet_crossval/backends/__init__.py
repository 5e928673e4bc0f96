"""What a C++ reference backend is (``specs``), facts about the platform (``platform``), and whether a
backend is usable, proved by loading it (``detect``).
"""
