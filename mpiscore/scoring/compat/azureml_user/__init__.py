"""mpiscore's stand-in for Azure ML's ``azureml_user`` package (only ``parallel_run``).

Importable only inside an entry-script job's scoring processes: the "script" scorer
(mpiscore/scoring/scorers/script.py) appends the ``compat`` directory to the END of
``sys.path``, so an ``azureml_user`` really installed wins, and nothing named
``azureml_user`` is ever installed by mpiscore itself.
"""
