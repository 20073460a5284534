"""Readers and writers, one module per format, registered by kind behind small interfaces.

``registry.py`` is the table of kinds (``register_source``, ``register_sink``) and
the only way a job reaches its format; ``kinds.py`` registers HDF5 and Parquet over
``hdf5.py`` and ``parquet.py``, which read and write their format; ``fields.py``
describes columns of data (what readers find, what writers create) and the Reader
and Writer interfaces; ``sources.py`` expands ``--input`` patterns.
"""
