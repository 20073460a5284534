"""Code that runs in a scoring process: its loop, the batch pipeline, the scorers.

Never imports mpi4py (a test checks).
"""
