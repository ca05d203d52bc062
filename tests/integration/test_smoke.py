"""The serving smoke test against a real `bentoml serve`: a good candidate passes, a model that
answers NaN fails clearly, and nothing is left behind (no server, no model in the store)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import numpy as np
import orjson
import psutil
import pytest
import torch

from training import store
from workflows.smoke import VERSION_HEADER, check_infer_response, smoke_test_v2


def servers_of(tag: str) -> list[psutil.Process]:
    """Live model-server processes (any worker) serving ``tag``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if proc.environ().get("TURNOUT_MODEL") == tag:
                found.append(proc)
    return found


@pytest.fixture(scope="module")
def staged(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("candidate")
    store.write_directory(trained[0], path)
    return path


@pytest.fixture(scope="module")
def staged_nan(trained, tmp_path_factory):
    net = copy.deepcopy(trained[0].net)
    with torch.no_grad():
        net.mlp[0].weight[0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan-candidate")
    store.write_directory(dataclasses.replace(trained[0], net=net), path)
    return path


@pytest.mark.slow
def test_staged_candidate_passes_without_being_registered(staged) -> None:
    ok, reason = smoke_test_v2(tag="fraud:v90", model_dir=staged)
    assert ok, reason
    assert "fraud:v90" in reason and "200" in reason and f"{VERSION_HEADER}: v90" in reason
    assert not store.exists("fraud:v90")  # served from a private store, never registered
    assert servers_of("fraud:v90") == []


@pytest.mark.slow
def test_registered_version_passes(trained) -> None:
    _, tag = trained
    ok, reason = smoke_test_v2(tag=tag)
    assert ok, reason
    assert servers_of(tag) == []


@pytest.mark.slow
def test_model_answering_nan_fails_clearly(staged_nan) -> None:
    ok, reason = smoke_test_v2(tag="fraud:v91", model_dir=staged_nan)
    assert not ok
    assert reason.startswith("fraud:v91: v2 infer answered 500")
    assert "non-finite 'probability'" in reason
    assert "\n" not in reason
    assert servers_of("fraud:v91") == []
    assert not store.exists("fraud:v91")


def test_nothing_to_serve_fails_without_starting_a_server(tmp_path) -> None:
    assert smoke_test_v2() == (False, "smoke test needs a model tag or a staged model directory")
    ok, reason = smoke_test_v2(tag="fraud:nope")
    assert not ok and "fraud:nope not found" in reason
    ok, reason = smoke_test_v2(tag="fraud:v92", model_dir=tmp_path / "missing")
    assert not ok and reason.startswith("cannot stage")
    ok, reason = smoke_test_v2(tag="fraud")
    assert not ok and "explicit name:version" in reason


# --- the response check, without a server ---------------------------------------------------


def response(values, *, shape=None, datatype="FP32", name="probability") -> bytes:
    out = {"name": name, "datatype": datatype, "shape": shape or [len(values)], "data": values}
    return orjson.dumps({"model_name": "fraud", "model_version": "v2", "outputs": [out]})


EXPECTED = np.array([0.1, 0.7], dtype=np.float32)
OK_HEADERS = {VERSION_HEADER: "v2"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "problem"),
    [
        (200, OK_HEADERS, response([0.1, 0.7]), None),
        (500, OK_HEADERS, b'{"error": "model broke"}', "v2 infer answered 500: model broke"),
        (200, {VERSION_HEADER: "v1"}, response([0.1, 0.7]), "header x-turnout-model-version"),
        (200, {}, response([0.1, 0.7]), "is None, expected 'v2'"),
        (200, OK_HEADERS, response([0.1, 0.7], name="score"), "no 'probability' output"),
        (200, OK_HEADERS, response([0.1, 0.7], datatype="FP64"), "expected FP32 [2]"),
        (200, OK_HEADERS, response([0.1], shape=[2]), "holds 1 values"),
        (200, OK_HEADERS, response([0.1, 1.7]), "outside [0, 1]"),
        (200, OK_HEADERS, response([0.1, 0.5]), "differ from the model in-process"),
        (200, OK_HEADERS, b"not json", "no 'probability' output"),
    ],
)
def test_check_infer_response(status, headers, body, problem) -> None:
    got = check_infer_response(status, headers, body, version="v2", expected=EXPECTED)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got
