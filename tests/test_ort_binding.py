"""runtimes/ort_binding.py: in-place buffers stay bound between runs, the small inputs and the
allocated outputs do not, and the binding never keeps a request's buffers alive."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from seqport.engine.runtime import RuntimeOptions
from seqport.runtimes.onnxruntime import OrtSession


@pytest.fixture(scope="module")
def step_graph(tmp_path_factory):
    """A stand-in decoder step: present = past + step (written in place over past), logits = 2·step."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    past = helper.make_tensor_value_info("past", TensorProto.FLOAT, ["B", 5])
    step = helper.make_tensor_value_info("step", TensorProto.FLOAT, ["B", 1])
    present = helper.make_tensor_value_info("present", TensorProto.FLOAT, ["B", 5])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["step", "two"], ["logits"]),
        helper.make_node("Add", ["past", "step"], ["present"]),
    ]
    graph = helper.make_graph(nodes, "step", [past, step], [logits, present], [two])
    path = tmp_path_factory.mktemp("binding") / "step.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(session, buffer, value):
    feeds = {"past": buffer, "step": np.full((buffer.shape[0], 1), value, np.float32)}
    return session.run(feeds, into={"present": buffer})


def test_in_place_buffers_stay_bound_and_inputs_do_not(step_graph):
    session = OrtSession(step_graph, RuntimeOptions())
    buffer = np.zeros((3, 5), np.float32)
    first = _run(session, buffer, 1.0)
    binding = session._in_place.binding._binding
    second = _run(session, buffer, 10.0)  # a new step value: the per-run input is bound anew
    assert session._in_place.binding._binding is binding  # the KV-like buffer was not bound again
    assert second["present"] is buffer and np.array_equal(buffer, np.full((3, 5), 11.0, np.float32))
    assert np.array_equal(first["logits"], np.full((3, 1), 2.0))
    assert np.array_equal(second["logits"], np.full((3, 1), 20.0))
    assert first["logits"] is not second["logits"]  # outputs onnxruntime allocates are new arrays


def test_new_buffers_are_bound_anew_and_old_ones_are_not_kept_alive(step_graph):
    session = OrtSession(step_graph, RuntimeOptions())
    old = np.zeros((2, 5), np.float32)
    _run(session, old, 1.0)
    new = np.zeros((4, 5), np.float32)  # the next request: other rows, other buffers
    out = _run(session, new, 3.0)
    assert out["present"] is new and np.array_equal(new, np.full((4, 5), 3.0, np.float32))
    assert np.array_equal(old, np.ones((2, 5), np.float32))  # the first request's buffer untouched
    gone = weakref.ref(new)
    del new, out
    gc.collect()
    assert gone() is None  # the binding holds no reference to the request's buffers
    again = np.zeros((4, 5), np.float32)  # may reuse the freed memory: must still be bound anew
    assert _run(session, again, 5.0)["present"] is again and np.array_equal(again, np.full((4, 5), 5.0))


def test_a_feed_that_is_not_the_output_buffer_is_not_taken_for_it(step_graph):
    """past given as a copy of the buffer (not the same object): read per run, result in `into`."""
    session = OrtSession(step_graph, RuntimeOptions())
    buffer = np.zeros((2, 5), np.float32)
    _run(session, buffer, 1.0)
    past = np.full((2, 5), 7.0, np.float32)
    out = session.run({"past": past, "step": np.ones((2, 1), np.float32)}, into={"present": buffer})
    assert out["present"] is buffer and np.array_equal(buffer, np.full((2, 5), 8.0))
    assert np.array_equal(past, np.full((2, 5), 7.0))


def test_threads_sharing_a_session_keep_their_own_buffers(step_graph):
    """Two requests on one session from two threads, steps interleaved: each writes its own buffer
    through its own binding, bound once (a shared one would be rebound, or raced, at every step)."""
    session = OrtSession(step_graph, RuntimeOptions())
    buffers = [np.zeros((2, 5), np.float32), np.zeros((3, 5), np.float32)]
    turns = [threading.Event(), threading.Event()]
    errors, bindings = [], [[], []]  # the binding objects each step ran with

    def request(index: int) -> None:
        try:
            for _ in range(4):
                turns[index].wait(5)
                turns[index].clear()
                _run(session, buffers[index], float(index + 1))
                bindings[index].append(session._in_place.binding._binding)
                turns[1 - index].set()
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)
            turns[1 - index].set()

    threads = [threading.Thread(target=request, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    turns[0].set()
    for thread in threads:
        thread.join(30)
    assert not errors and all(b is seen[0] for seen in bindings for b in seen)
    assert np.array_equal(buffers[0], np.full((2, 5), 4.0)) and np.array_equal(buffers[1], np.full((3, 5), 8.0))


def test_a_small_input_passed_as_the_same_array_stays_bound_and_reads_its_new_values(step_graph, monkeypatch):
    """engine/causal_lane.py writes its step inputs in place into the same arrays: no bind call
    for them, and each run reads what they hold now; a new array is bound anew."""
    session = OrtSession(step_graph, RuntimeOptions())
    buffer, step, logits = np.zeros((2, 5), np.float32), np.ones((2, 1), np.float32), np.zeros((2, 1), np.float32)
    into = {"present": buffer, "logits": logits}
    session.run({"past": buffer, "step": step}, into=into)
    binding = session._in_place.binding
    native, calls = type(binding._binding._iobinding), []
    original = native.bind_ortvalue_input
    monkeypatch.setattr(native, "bind_ortvalue_input", lambda self, *a: calls.append(a[0]) or original(self, *a))
    step[:] = 5.0  # in place
    out = session.run({"past": buffer, "step": step}, into=into)
    assert out["logits"] is logits and np.array_equal(logits, np.full((2, 1), 10.0))
    assert np.array_equal(buffer, np.full((2, 5), 6.0)) and calls == []
    other = np.full((2, 1), 100.0, np.float32)  # a new array: bound anew
    session.run({"past": buffer, "step": other}, into=into)
    assert np.array_equal(logits, np.full((2, 1), 200.0)) and calls == ["step"]
