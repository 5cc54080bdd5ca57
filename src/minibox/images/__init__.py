"""Root filesystems both isolation paths boot from.

A container pivots into a directory; a VM shares the same directory into
its guest over virtiofs.  What builds and checks those directories lives
here, below both ``container/`` and ``vm/``, so that neither path imports
the other.
"""
