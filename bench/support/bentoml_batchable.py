"""The fraud model behind BentoML's own adaptive batching (benchmark contender).

``bentoml serve bench.bentoml_batchable:FraudBatchable --working-dir /work/main`` with
TURNOUT_MODEL / TURNOUT_HOME / BENTOML_HOME set. ``POST /predict`` ``{"features": [[...14]]}``
-> a JSON list of probabilities. Concurrent requests are merged by BentoML's CorkDispatcher
(``batchable=True``); the sync API runs in BentoML's thread pool, as BentoML does for sync APIs.

Settings chosen to match turnout's server where they overlap: 1 worker, 1 torch thread, access
log off, traffic timeout 30 s; max_batch_size 256 = TURNOUT_MAX_BATCH_ROWS. The same fixes
around BentoML as turnout's server (timer cancel, gc.freeze, no span on /predict), so the
comparison isolates the batching mechanism.
max_latency_ms 1000 (BentoML's default is 60000): a latency budget generous enough that the
dispatcher never sheds load with 503 at 64 concurrent clients, while keeping its learned wait
bounded. Override with BENCH_MAX_LATENCY_MS / BENCH_MAX_BATCH_SIZE.
"""

from __future__ import annotations

import os

from turnout.io.settings import use_local_model_store

use_local_model_store()

import gc  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import store  # noqa: E402
from training.model import predict_proba  # noqa: E402
from turnout_sdk import bentoml_fixes  # noqa: E402

bentoml_fixes.apply()
MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "256"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))


@bentoml.service(
    name="fraud-batchable",
    workers=1,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/predict$"]},
)
class FraudBatchable:
    def __init__(self) -> None:
        torch.set_num_threads(int(os.environ.get("TURNOUT_TORCH_THREADS", "1")))
        loaded = store.load(os.environ.get("TURNOUT_MODEL", "fraud:v1"))
        self.net = loaded.net
        self.n_features = len(loaded.schema.features)
        predict_proba(self.net, np.zeros((1, self.n_features), dtype=np.float32))  # warm up

    @bentoml.on_startup
    def freeze(self) -> None:
        gc.freeze()

    @bentoml.api(
        route="/predict", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def predict(self, features: np.ndarray) -> np.ndarray:
        return predict_proba(self.net, np.asarray(features, dtype=np.float32))
