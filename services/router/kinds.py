"""The two ways a caller asks the router for a prediction, and what differs between them.

``POST /v2/models/{name}/infer`` speaks the open inference protocol; ``POST /predict`` is the
model server's plain JSON (``{"features": [...]}`` in, ``{"probability": [...]}`` out). The
router forwards both bodies untouched; only four things depend on the kind: the upstream URL,
how to count the rows of a request (for a static fallback), how to read the outputs of a reply
(to compare a shadow with the primary) and what a fallback answer looks like. Each kind carries
those four as plain functions, so the forwarding code never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from turnout.core.spec import Upstream
from turnout_sdk import protocol as oip

#: Every output of a reply by name, rows first.
Outputs = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class RequestKind:
    name: str
    #: The URL of one version's endpoint for this kind: (version, model name) -> URL.
    upstream_url: Callable[[Upstream, str], str]
    #: Rows in a request body, None when it cannot be read: (body, request headers) -> rows.
    rows: Callable[[bytes, Mapping[str, str]], int | None]
    #: The outputs of a 200 reply by name: (body, reply headers) -> outputs. Raises on a reply
    #: it cannot read (oip.ProtocolError, orjson.JSONDecodeError, KeyError, TypeError,
    #: ValueError).
    outputs: Callable[[bytes, Mapping[str, str]], Outputs]
    #: The document a static fallback answers: (model name, probability, rows) -> doc.
    fallback_doc: Callable[[str, float, int], dict[str, Any]]


def _infer_url(target: Upstream, model: str) -> str:
    # Unversioned: each version has a URL of its own, and KServe's ModelServer answers 501 to
    # the /versions/{v} forms (sdk/CONTRACT.md).
    return f"{target.url}/v2/models/{model}/infer"


def _infer_rows(body: bytes, headers: Mapping[str, str]) -> int | None:
    return oip.rows_of(body, header_length=headers.get(oip.HEADER_LENGTH))


def _infer_outputs(body: bytes, headers: Mapping[str, str]) -> Outputs:
    return oip.decode_outputs(body, header_length=headers.get(oip.HEADER_LENGTH))


def _infer_fallback(model: str, probability: float, rows: int) -> dict[str, Any]:
    scores = [probability] * rows
    return {
        "model_name": model,
        "model_version": "fallback",
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [rows], "data": scores}],
    }


def _predict_url(target: Upstream, model: str) -> str:
    return f"{target.url}/predict"


def _predict_rows(body: bytes, headers: Mapping[str, str]) -> int | None:
    try:
        return len(orjson.loads(body)["features"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _predict_outputs(body: bytes, headers: Mapping[str, str]) -> Outputs:
    return {"probability": np.asarray(orjson.loads(body)["probability"], dtype=np.float64)}


def _predict_fallback(model: str, probability: float, rows: int) -> dict[str, Any]:
    return {"model_version": "fallback", "probability": [probability] * rows}


#: ``POST /v2/models/{name}[/versions/{v}]/infer``: the open inference protocol, JSON or binary.
INFER = RequestKind(
    name="infer",
    upstream_url=_infer_url,
    rows=_infer_rows,
    outputs=_infer_outputs,
    fallback_doc=_infer_fallback,
)
#: ``POST /predict``: the model server's plain JSON endpoint.
PREDICT = RequestKind(
    name="predict",
    upstream_url=_predict_url,
    rows=_predict_rows,
    outputs=_predict_outputs,
    fallback_doc=_predict_fallback,
)
