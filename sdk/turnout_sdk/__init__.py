"""turnout's serving SDK: turn a BentoML service into a turnout model server.

    import turnout_sdk as turnout

    @turnout.model_server(
        inputs=[turnout.Tensor("image", "FP32", (-1, 1, 8, 8))],
        outputs=[turnout.Tensor("probabilities", "FP32", (-1, 10))],
        task=turnout.MultiClass(),
    )
    class Digits:
        model = turnout.model_ref("digits")

        def __init__(self) -> None: ...          # load self.model's weights
        def predict(self, image: np.ndarray) -> np.ndarray: ...

Everything else (the v2 endpoints, batching, metrics, the version in every reply) comes from
the decorator; sdk/CONTRACT.md says what a model server promises turnout.
"""

from turnout_sdk.server import BadInput, ModelNotFound, model_ref, model_server
from turnout_sdk.tasks import BinaryScore, Exact, MultiClass, Regression, Task, reference
from turnout_sdk.tensors import DeclarationError, Tensor

__all__ = [
    "BadInput",
    "BinaryScore",
    "DeclarationError",
    "Exact",
    "ModelNotFound",
    "MultiClass",
    "Regression",
    "Task",
    "Tensor",
    "model_ref",
    "model_server",
    "reference",
]
