"""The README's examples are what the code does (issue 11, "Documents").

- Every ```python block of README.md and client/README.md runs as written. Blocks that
  talk to a server (they name ``127.0.0.1:8000`` or ``localhost:8000``) run against a
  real ``lossd serve`` started here, the address replaced by its own.
- Every ``$ curl`` sample of a ```console block is sent to that server; the answer must
  have the sample's shape (keys, lengths, types) and values (numbers to 1e-9 relative,
  strings exactly: error messages, the readiness signature count). ``{...}`` in a sample
  stands for any object.
- The signature counts the README states equal ``kernels.warmup()``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import httpx
import pytest

from lossd import kernels

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "client" / "README.md"]
DEFAULT_ADDRESSES = ("127.0.0.1:8000", "localhost:8000")
GRPC_ADDRESS = "127.0.0.1:8001"  # the README's LOSSD_GRPC_PORT=8001


@pytest.fixture(scope="module")
def server():
    """conftest's server with OIP over gRPC on (LOSSD_GRPC_PORT) for the README's gRPC example
    and system shared memory (LOSSD_SHM) for its shared memory example."""
    from service_helpers import free_port, lossd_serve

    grpc_port = free_port()
    s = lossd_serve(env={"LOSSD_GRPC_PORT": str(grpc_port), "LOSSD_SHM": "true"})
    s.grpc_port = grpc_port
    try:
        yield s.start()
    finally:
        s.close()


def blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced block of ``lang``."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((i + 2, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


PYTHON = [(p, line, code) for p in READMES for line, code in blocks(p, "python")]


def test_the_readmes_have_python_blocks():
    assert {p.name for p, _, _ in PYTHON} == {"README.md"} and len(PYTHON) >= 4
    assert [p.parent.name for p, _, _ in PYTHON].count("client") == 1


@pytest.mark.parametrize("path,line,code", PYTHON,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _ in PYTHON])
def test_python_block_runs(server, path, line, code):
    for address in DEFAULT_ADDRESSES:
        code = code.replace(address, f"127.0.0.1:{server.port}")
    code = code.replace(GRPC_ADDRESS, f"127.0.0.1:{server.grpc_port}")
    namespace = {"__name__": "__readme__"}
    try:
        exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
    finally:
        kernels.set_threads(None)


# --------------------------------------------------------------------------- console

def curl_samples(path: Path) -> list[tuple[int, list[list[str]], str]]:
    """(line, the curl commands of one ``$`` line, the sample output) of each sample."""
    out = []
    for line, text in blocks(path, "console"):
        rows = text.splitlines()
        i = 0
        while i < len(rows):
            if not rows[i].startswith("$ "):
                i += 1
                continue
            start, command = line + i, rows[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + rows[i]
            i += 1
            sample = []
            while i < len(rows) and not rows[i].startswith("$ "):
                sample.append(rows[i])
                i += 1
            commands = [shlex.split(c) for c in command.split(";")]
            out.append((start, commands, "\n".join(sample).strip()))
    return out


SAMPLES = [s for p in READMES for s in curl_samples(p)]
ANY = object()


def _values(text: str) -> list:
    """The JSON values of a sample, one after another; ``{...}`` is ANY."""
    text = text.replace("{...}", '"\\u0000any"')
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        v, i = decoder.raw_decode(text, i)
        out.append(v)
    return [_any(v) for v in out]


def _any(v):
    if v == "\u0000any":
        return ANY
    if isinstance(v, dict):
        return {k: _any(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_any(x) for x in v]
    return v


def assert_like(sample, actual, where: str = "") -> None:
    if sample is ANY:
        assert isinstance(actual, dict), where
    elif isinstance(sample, dict):
        assert isinstance(actual, dict) and list(actual) == list(sample), (where, list(sample), actual)
        for k in sample:
            assert_like(sample[k], actual[k], f"{where}.{k}")
    elif isinstance(sample, list):
        assert isinstance(actual, list) and len(actual) == len(sample), (where, sample, actual)
        for i, (s, a) in enumerate(zip(sample, actual)):
            assert_like(s, a, f"{where}[{i}]")
    elif isinstance(sample, float):
        assert type(actual) is float and math.isclose(actual, sample, rel_tol=1e-9, abs_tol=1e-300), \
            (where, sample, actual)
    else:  # int (a count), str, bool, None: exactly
        assert type(actual) is type(sample) and actual == sample, (where, sample, actual)


def _send(c: httpx.Client, argv: list[str]) -> httpx.Response:
    assert argv[:2] == ["curl", "-s"], argv
    url, headers, data = None, {}, None
    args = iter(argv[2:])
    for a in args:
        if a == "-H":
            k, _, v = next(args).partition(":")
            headers[k.strip()] = v.strip()
        elif a == "-d":
            data = next(args)
        else:
            url = a
    assert url and url.split("/", 1)[0] in DEFAULT_ADDRESSES, url
    path = "/" + url.split("/", 1)[1]
    return c.post(path, content=data, headers=headers) if data is not None else c.get(path)


@pytest.mark.parametrize("line,commands,sample", SAMPLES, ids=[f"README.md:{s[0]}" for s in SAMPLES])
def test_console_sample_matches_the_server(server, line, commands, sample):
    want = _values(sample)
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        got = [_send(c, argv).json() for argv in commands]
    assert len(got) == len(want), (got, want)
    for s, a in zip(want, got):
        assert_like(s, a, f"README.md:{line}")


def test_console_samples_cover_every_json_endpoint():
    paths = {argv[2].split("/", 1)[1] for _, commands, _ in SAMPLES for argv in commands}
    assert {"loss", "grad", "healthz", "readyz"} <= paths, paths


def test_stated_signature_counts_are_the_real_ones():
    text = (ROOT / "README.md").read_text()
    stated = [int(n) for n in re.findall(r'"signatures":(\d+)', text)]
    stated += [int(n) for n in re.findall(r"all (\d+) signatures", text)]
    stated += [int(n) for n in re.findall(r'"total": (\d+)', text)]
    stated += [int(n) for n in re.findall(r"of (\d+) kernel signatures", text)]
    assert stated and set(stated) == {kernels.warmup()}, stated
