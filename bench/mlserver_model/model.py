"""An MLServer custom runtime serving the mean binary cross-entropy on logits with NumPy:
the reference lossd's OIP JSON endpoint is compared with (issue 14, bench/mlserver.py).

Written as an MLServer user would write it (its docs' custom-runtime pattern): an
``MLModel`` subclass, inputs decoded with MLServer's own ``NumpyCodec``, the loss in the
numerically stable form ``max(s, 0) - s*y + log1p(exp(-|s|))`` (no overflow for any
finite logit), the mean by NumPy (pairwise summation: not exactly rounded, so the
benchmark compares with lossd to 1e-12 relative, not to the bit).

Request (the same OIP JSON body lossd takes at ``POST /v2/models/loss/infer``):
inputs ``predictions`` (logits) and ``labels``, FP64, equal shapes. Answer: output
``loss``, FP64, shape [1].

This file runs in MLServer's own venv (bench/.venv-mlserver, made by
bench/mlserver_setup.sh), never in the project's.
"""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class BinaryCrossEntropy(MLModel):
    async def load(self) -> bool:
        # nothing to load: the "model" is a formula
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = {inp.name: self.decode(inp, default_codec=NumpyCodec) for inp in payload.inputs}
        missing = {"predictions", "labels"} - tensors.keys()
        if missing:
            raise InferenceError(f"missing input(s): {', '.join(sorted(missing))}")
        s = np.asarray(tensors["predictions"], dtype=np.float64)
        y = np.asarray(tensors["labels"], dtype=np.float64)
        if s.shape != y.shape or s.size == 0:
            raise InferenceError(f"predictions {s.shape} and labels {y.shape}: need equal, non-empty shapes")
        loss = np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s))))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[ResponseOutput(name="loss", datatype="FP64", shape=[1], data=[float(loss)])],
        )
