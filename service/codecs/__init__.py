"""Codecs: request bodies to the request model (``requests.py``), the kernels' results
to response bodies. One per wire format, all following ``base.Codec``:

- ``json``: the JSON API's /loss and /grad bodies (simdjson fast path, orjson);
- ``oip_json``: Open Inference Protocol v2 infer requests and responses, tensors as
  JSON ``data``;
- ``oip_binary``: the OIP binary tensor data extension's framing (raw tensors after the
  JSON header, zero-copy), used by the OIP codec.

No FastAPI and no routes here: a new transport (gRPC, shared memory) adds a codec and
reuses the request model, ``compute`` and the kernels' result types.
"""

from .base import Codec, Decoded

__all__ = ["Codec", "Decoded"]
