"""Serving: the pyfunc's input checks, and the real `mlflow models serve` over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException

from bench.harness import served_model
from catsdogs import synthetic
from catsdogs.serve import CallBatcher


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _good_files() -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    odd = synthetic.odd_images(rng)
    return {"photo.jpg": synthetic.encode(synthetic.make_photo(rng)), "alpha.png": odd["alpha.png"],
            "grey.jpg": odd["grey.jpg"], "palette.gif": odd["palette.gif"]}


def _bad_payloads() -> dict[str, tuple[dict, str]]:
    photo = synthetic.encode(synthetic.make_photo(np.random.default_rng(1)))
    return {
        "missing column": ({"dataframe_records": [{"picture": _b64(photo)}]}, "image"),
        "invalid base64": ({"dataframe_records": [{"image": "not base64!!"}]}, "base64"),
        "not an image": ({"dataframe_records": [{"image": _b64(b"hello world, no pixels here")}]}, "not an image"),
        "truncated image": ({"dataframe_records": [{"image": _b64(photo[: len(photo) // 2])}]}, "truncated"),
        "empty list": ({"dataframe_split": {"columns": ["image"], "data": []}}, ""),
        "decompression bomb": ({"dataframe_records": [{"image": _b64(synthetic.decompression_bomb())}]}, "too large"),
    }


@pytest.fixture(scope="module")
def pyfunc(champion: dict, tiny_project: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tiny_project}/mlflow.db")
    return mlflow.pyfunc.load_model("models:/catsdogs@champion")


@pytest.mark.parametrize("case", ["invalid base64", "not an image", "truncated image", "decompression bomb"])
def test_pyfunc_rejects_bad_images_with_a_reason(pyfunc, case: str) -> None:
    payload, reason = _bad_payloads()[case]
    with pytest.raises(MlflowException, match=reason) as err:
        pyfunc.predict(pd.DataFrame(payload["dataframe_records"]))
    assert err.value.get_http_status_code() == 400


def test_pyfunc_names_the_bad_image_of_a_request(pyfunc) -> None:
    good = _b64(_good_files()["photo.jpg"])
    with pytest.raises(MlflowException) as err:
        pyfunc.predict(pd.DataFrame({"image": [good, "not base64!!"]}))
    assert err.value.message == "image 1: not valid base64"


def test_pyfunc_rejects_empty_and_oversized_requests(pyfunc) -> None:
    with pytest.raises(MlflowException, match="no images"):
        pyfunc.predict(pd.DataFrame({"image": pd.Series([], dtype=str)}))
    many = [_b64(_good_files()["photo.jpg"])] * 65
    with pytest.raises(MlflowException, match="limit is 64"):
        pyfunc.predict(pd.DataFrame({"image": many}))


@pytest.fixture(scope="module")
def server(champion: dict, tiny_project: Path) -> Iterator[str]:
    with served_model(tiny_project, timeout=240) as url:
        yield url


def _post(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def test_http_answers_every_request_shape(server: str, pyfunc) -> None:
    files = _good_files()
    encoded = [_b64(data) for data in files.values()]
    expected = pyfunc.predict(pd.DataFrame({"image": encoded}))
    shapes = {
        "dataframe_records": {"dataframe_records": [{"image": e} for e in encoded]},
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}},
        "inputs": {"inputs": {"image": encoded}},
    }
    for shape, payload in shapes.items():
        response = _post(server, payload)
        assert response.status_code == 200, (shape, response.text[:500])
        predictions = pd.DataFrame(response.json()["predictions"])
        assert list(predictions["label"]) == list(expected["label"]), shape
        np.testing.assert_allclose(predictions["p_dog"], expected["p_dog"], rtol=1e-6)
        np.testing.assert_allclose(predictions["p_cat"] + predictions["p_dog"], 1.0)


@pytest.mark.parametrize("case", list(_bad_payloads()))
def test_http_bad_requests_get_400_and_the_server_keeps_serving(server: str, case: str) -> None:
    payload, reason = _bad_payloads()[case]
    response = _post(server, payload)
    assert response.status_code == 400, response.text[:500]
    assert reason in response.json()["message"]
    good = _post(server, {"dataframe_records": [{"image": _b64(_good_files()["photo.jpg"])}]})
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] in {"cat", "dog"}


def test_http_rejects_non_json(server: str) -> None:
    response = requests.post(f"{server}/invocations", data=b"\x00\x01", headers={"Content-Type": "application/json"},
                             timeout=30)
    assert 400 <= response.status_code < 500


def test_pyfunc_batch_mode_gives_each_bad_image_its_error(pyfunc) -> None:
    """params errors=column (what `catsdogs score` asks for): bad images get an error, the others a label."""
    good = [_b64(data) for data in _good_files().values()]
    values = [good[0], "not base64!!", _b64(b"hello, no pixels here"), good[1]]
    result = pyfunc.predict(pd.DataFrame({"image": values}), params={"errors": "column"})
    assert list(result.columns) == ["label", "p_cat", "p_dog", "error"]
    assert list(result["error"][[0, 3]]) == ["", ""]
    assert result["error"][1] == "not valid base64" and "not an image" in result["error"][2]
    assert pd.isna(result["label"][1]) and np.isnan(result["p_dog"][2])
    expected = pyfunc.predict(pd.DataFrame({"image": [good[0], good[1]]}))
    np.testing.assert_allclose(result["p_dog"][[0, 3]], expected["p_dog"], rtol=1e-6)
    many = pyfunc.predict(pd.DataFrame({"image": [good[0]] * 70}), params={"errors": "column"})
    assert len(many) == 70 and (many["error"] == "").all(), "no per-request limit when scoring in batches"
    with pytest.raises(MlflowException, match="params.errors must be"):
        pyfunc.predict(pd.DataFrame({"image": good}), params={"errors": "ignore"})


def test_concurrent_requests_share_model_calls_one_at_a_time() -> None:
    """The scoring server's threads: each caller gets its own answers, calls never overlap, and the callers
    that wait are served together (fewer calls than callers)."""
    calls: list[int] = []
    running = [0]
    overlapped = []
    lock = threading.Lock()

    def model(pixels: np.ndarray) -> np.ndarray:
        with lock:
            running[0] += 1
            overlapped.append(running[0] > 1)
            calls.append(len(pixels))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return pixels.reshape(len(pixels), -1).sum(axis=1)

    batcher = CallBatcher(model, max_images=6)
    inputs = [np.full((1 + i % 2, 2, 2, 1), float(i)) for i in range(8)]
    answers: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        answers[i] = batcher(inputs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, x in enumerate(inputs):
        np.testing.assert_array_equal(answers[i], np.full(len(x), 4.0 * i))
    assert not any(overlapped) and sum(calls) == sum(len(x) for x in inputs) == 12
    assert len(calls) < 8 and max(calls) <= 6


def test_a_failed_model_call_fails_its_callers_and_the_next_call_works() -> None:
    state = {"fail": True}

    def model(pixels: np.ndarray) -> np.ndarray:
        if state["fail"]:
            raise RuntimeError("out of memory")
        return np.zeros(len(pixels))

    batcher = CallBatcher(model, max_images=4)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher(np.zeros((2, 1)))
    state["fail"] = False
    np.testing.assert_array_equal(batcher(np.zeros((3, 1))), np.zeros(3))
