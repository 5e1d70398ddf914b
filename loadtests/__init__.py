"""Locust load tests of lossd: the traffic classes (``locustfile.py``), their payloads and
expected answers (``payloads.py``), and ``python -m loadtests``, which starts lossd, runs
locust headless and judges the result (``cli.py``); a capacity sweep (``sweep.py``) and a
soak mode ride on the same pieces."""
