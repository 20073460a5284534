"""Code that runs in an MPI rank: coordinator, worker, its scoring processes, the MPI world.

Never imports onnxruntime (a test checks).
"""
