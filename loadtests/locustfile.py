"""Locust user classes for lossd's real traffic.

    locust -f loadtests/locustfile.py -H http://127.0.0.1:8000 --headless -u 50 -r 10 -t 60s
    python -m loadtests ...   (starts lossd, runs this headless, prints a summary)

One class per kind of request (the request ``name`` in locust's statistics is the class
key, e.g. ``small_loss``):

- ``SmallLoss``   small_loss   POST /loss, JSON, n = 10
- ``LargeLoss``   large_loss   POST /loss, JSON, n = 10^5, reduction none
- ``Grad``        grad         POST /grad, JSON, n = 10^4
- ``OipBinary``   oip_binary   POST /v2/models/loss/infer, binary tensors, n = 10^6
- ``GradParams``  grad_params  POST /grad, wrt params, features 10^4 x 32

Weights are the classes' ``weight`` attributes; change them with locust's own
``--config-users '[{"user_class_name": "SmallLoss", "weight": 10}]'`` (or
LOCUST_CONFIG_USERS), or pick classes by name at the end of the command line. Sizes,
the token, the think time and latency budgets are the options below (each also an
environment variable). Every user builds its payload once, in ``on_start``, with the
answer computed by ``lossd.kernels``; a wrong number is a failure. The users are
FastHttpUser (geventhttpclient): several times the requests per CPU second of
HttpUser (requests), which matters when the generator shares 2 cores with the server.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from typing import ClassVar

import gevent
from locust import FastHttpUser, constant_pacing, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests import budgets, payloads

log = logging.getLogger("lossd.loadtest")

_seeds = itertools.count(int(os.environ.get("LOSSD_LOAD_SEED", "1")))


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("lossd", "Payload sizes, token, think time and budgets")
    defaults = payloads.Sizes()
    for name in payloads.Sizes.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, type=int, default=getattr(defaults, name),
                           env_var=f"LOSSD_LOAD_{name.upper()}", help=f"default {getattr(defaults, name)}")
    group.add_argument("--token", default="", env_var="LOSSD_API_TOKEN",
                       help="bearer token, when lossd runs with LOSSD_API_TOKEN")
    group.add_argument("--pace-ms", type=float, default=None, env_var="LOSSD_LOAD_PACE_MS",
                       help="every user starts a request at most every this many ms (locust's "
                            "constant_pacing), instead of its class's own pace_ms; 0: back to "
                            "back (closed loop)")
    group.add_argument("--budgets", default="", env_var="LOSSD_LOAD_BUDGETS",
                       help="latency budgets, e.g. 'small_loss:p99=5,all:p95=500'; the run exits "
                            f"with code {budgets.BUDGET_EXIT_CODE} when one is exceeded")


def sizes_of(environment: Environment) -> payloads.Sizes:
    opts = environment.parsed_options
    return payloads.Sizes(**{name: getattr(opts, name) for name in payloads.Sizes.__dataclass_fields__})


_environment: Environment | None = None


@events.init.add_listener
def _configure(environment: Environment, **_: object) -> None:
    global _environment
    _environment = environment
    opts = environment.parsed_options
    if opts is None:  # used as a library without a command line: the defaults
        return
    budgets.parse(opts.budgets)  # a malformed budget stops the run before it starts
    if opts.pace_ms is not None:
        for cls in (SmallLoss, LargeLoss, Grad, OipBinary, GradParams):
            cls.pace_ms = opts.pace_ms
    if not isinstance(environment.runner, MasterRunner):
        # load the kernels (and their signatures) now: the first user of each class would
        # otherwise stall this process's other users for seconds while numba loads them
        tiny = payloads.Sizes(small_n=4, large_n=4, grad_n=4, oip_n=4, params_n=4, params_d=2)
        for cls in environment.user_classes:
            if issubclass(cls, LossdUser):
                payloads.build(cls.key, tiny, seed=0)


@events.spawning_complete.add_listener
def _record_users(user_count: int, **_: object) -> None:
    """How many users of each class locust started (weights round), beside the CSV as
    ``<csv prefix>_users.json``: the summary reports them."""
    env = _environment
    if env is None or env.parsed_options is None or not env.parsed_options.csv_prefix \
            or isinstance(env.runner, WorkerRunner):
        return
    counts = dict(getattr(env.runner, "target_user_classes_count", None) or env.runner.user_classes_count)
    with open(f"{env.parsed_options.csv_prefix}_users.json", "w") as f:
        json.dump({"total": user_count, "by_class": counts}, f)


@events.quitting.add_listener
def _judge_budgets(environment: Environment, **_: object) -> None:
    """The master (or a standalone run) judges the budgets on the merged statistics."""
    opts = environment.parsed_options
    if opts is None or isinstance(environment.runner, WorkerRunner):
        return
    problems = budgets.exceeded(budgets.parse(opts.budgets), environment.stats)
    for p in problems:
        log.error(p)
    if problems and not environment.stats.total.num_failures:  # failures keep locust's own code
        environment.process_exit_code = budgets.BUDGET_EXIT_CODE


def paced(user: "LossdUser") -> float:
    """locust's constant_pacing with the user's own period (``pace_ms``, per class, which
    ``--config-users`` can set): a user starts a request at most every pace_ms, so the
    offered load does not depend on how fast the server answers (0: back to back)."""
    if user.pace_ms <= 0:
        return 0.0
    return constant_pacing(user.pace_ms / 1e3)(user)


class LossdUser(FastHttpUser):
    abstract = True
    key: ClassVar[str]
    pace_ms: ClassVar[float] = 0.0
    wait_time = paced
    network_timeout = 120.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        token = opts.token if opts is not None else ""
        self.payload = payloads.build(self.key, sizes_of(self.environment) if opts is not None
                                      else payloads.Sizes(), next(_seeds), token or None)
        if self.pace_ms > 0:
            # a random phase within the pace: locust starts users at a fixed rate, and when
            # its interval divides the pace (30 users/s, 100 ms) users fall into a few
            # phases and fire in bursts of ten, which measures the bursts, not the server
            gevent.sleep(random.uniform(0.0, self.pace_ms / 1e3))

    @task
    def send(self) -> None:
        p = self.payload
        with self.client.post(p.path, data=p.body, headers=p.headers, name=p.key,
                              catch_response=True) as r:
            problem = p.check(r.status_code or 0, r.headers or {}, r.content or b"")
            if problem is None:
                r.success()
            else:
                r.failure(problem)


# The mixed profile: with 50 users, 30 / 5 / 8 / 4 / 3 of each class, each paced so that
# the mix offers about half of what two workers carried of each class alone on this busy
# 2-core machine (python -m loadtests sweep, BENCHMARKS.md): ~300 small and ~100 large
# requests/s. Saturated, every class queues and no latency goal means anything.


class SmallLoss(LossdUser):
    key = payloads.SMALL
    weight = 30
    pace_ms = 100.0


class LargeLoss(LossdUser):
    key = payloads.LARGE
    weight = 5
    pace_ms = 500.0


class Grad(LossdUser):
    key = payloads.GRAD
    weight = 8
    pace_ms = 100.0


class OipBinary(LossdUser):
    key = payloads.OIP
    weight = 4
    pace_ms = 1000.0


class GradParams(LossdUser):
    key = payloads.PARAMS
    weight = 3
    pace_ms = 1000.0


USER_CLASSES = {cls.key: cls.__name__ for cls in (SmallLoss, LargeLoss, Grad, OipBinary, GradParams)}
