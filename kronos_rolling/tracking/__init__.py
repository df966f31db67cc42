"""MLflow as the system of record.

    context.py       Tracking: one tracking URI and a client bound to it, passed explicitly
    server.py        the tracking server: start, wait, stop (SQLite, PostgreSQL, S3 artifacts)
    supervisor.py    a child process tree that ends with whoever started it (the server, jobs)
    runs.py          what a run logs and how an unfinished run is closed
    adapters.py      where an adapter comes from: a folder, a run artifact, a registered version
    integrity.py     may a version load or serve? sha256 of every file, finite tensors, the class
    pyfunc.py        logging the pyfunc model (models from code); pyfunc_model.py is its code
"""
