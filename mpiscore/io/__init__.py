"""Readers and writers, one module per format, behind small shared interfaces.

``fields.py`` describes columns of data (what readers find, what writers
create); ``sources.py`` expands ``--input`` globs; ``hdf5.py`` and
``parquet.py`` read and write their format; ``registry.py`` picks one.
"""
