"""`seqport batch --ray` and the Ray Serve deployment on a real 2-node local Ray cluster.

The module starts the cluster itself (two `ray start` nodes of 1 CPU each on 127.0.0.1, every
port chosen free, token auth off as a local test cluster needs since Ray 2.5x) and stops
exactly the processes it started afterwards. The bundled translator is the artifact (exported
once into the cache, as `seqport demo` does). Marked `ray`; about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from seqport.batch import BatchJob, JobSpec, RayOptions, run_job  # noqa: E402
from seqport.serving.server import bundled_translator  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
MAX_NEW = 3  # short outputs keep 10,000 records within the CI budget
WORDS = "house dog cat tea home cold small big red blue one two where is the".split()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_ports() -> list[str]:
    names = (
        "node-manager",
        "object-manager",
        "dashboard-agent-listen",
        "dashboard-agent-grpc",
        "metrics-export",
        "runtime-env-agent",
    )
    return [f"--{name}-port={port}" for name, port in zip(names, _free_ports(len(names)))]


def _our_processes(temp_dir: str) -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in (process.info["cmdline"] or [])):
            found.append(process)
    return found


def _stop(temp_dir: str) -> None:
    """Stop the processes of this cluster only (their command lines name its temp dir); `ray stop
    --force` only if some survive, since it stops every Ray process on the machine."""
    import psutil

    processes = _our_processes(temp_dir)
    for process in processes:
        process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        process.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    if alive or _our_processes(temp_dir):
        subprocess.run([RAY, "stop", "--force"], check=False, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def cluster():
    """The address of a fresh 2-node local cluster, stopped after the module."""
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver, and the nodes it starts, skip token auth
    temp_dir = tempfile.mkdtemp(prefix="sqray", dir="/tmp")  # short: Ray's socket paths must stay short
    port, client_port = _free_ports(2)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=150000000", "--disable-usage-stats"]
    try:
        head = [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={client_port}",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
            *common,
            *_node_ports(),
        ]
        subprocess.run(head, check=True, capture_output=True, timeout=120)
        worker = [RAY, "start", f"--address=127.0.0.1:{port}", f"--temp-dir={temp_dir}", *common, *_node_ports()]
        subprocess.run(worker, check=True, capture_output=True, timeout=120)
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING", log_to_driver=False)
        deadline = time.monotonic() + 60
        while sum(node["Alive"] for node in ray.nodes()) < 2:
            assert time.monotonic() < deadline, f"the second node never joined: {ray.nodes()}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(temp_dir)
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth


@pytest.fixture(scope="module")
def translator() -> Path:
    return bundled_translator()


def _lines(count: int) -> list[str]:
    import random

    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(count)]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_on_two_nodes_equals_the_local_run(cluster, translator, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(_lines(10_000)) + "\n", encoding="utf-8")
    spec = JobSpec(generation={"max_new_tokens": MAX_NEW}, chunk_size=128, worker_field="worker")
    local = run_job(BatchJob(translator, source, tmp_path / "local.jsonl", spec, shard_size=1000, threads=2))
    on_ray = run_job(
        BatchJob(translator, source, tmp_path / "ray.jsonl", spec, shard_size=1000, ray=RayOptions(cluster, 2))
    )
    assert local.records == on_ray.records == 10_000 and on_ray.failures == 0
    expected, got = _read(tmp_path / "local.jsonl"), _read(tmp_path / "ray.jsonl")
    workers = Counter(row.pop("worker").split(":")[0] for row in got)
    for row in expected:
        row.pop("worker")
    assert [row["id"] for row in got] == list(range(10_000))
    assert got == expected, "the Ray output differs from the single-process output"
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert set(workers) == nodes and len(nodes) == 2, f"records per node: {workers}, nodes: {nodes}"


def test_a_shipped_artifact_is_loaded_and_checked_on_the_worker(cluster, translator, tmp_path):
    import shutil

    import seqport.engine as sp
    from seqport.batch.shipping import ship
    from seqport.engine.errors import IntegrityError

    @ray.remote(num_cpus=1)
    def translate(source) -> str:
        import os

        from seqport.batch.shipping import materialized
        from seqport.engine import load

        with materialized(source) as folder:
            model = load(folder, verify=True)
        # the temporary copy is gone once loaded; the model still translates from memory
        return f"{folder}|{os.path.exists(folder)}|{model.generate(['the house'], max_new_tokens=MAX_NEW)[0].text}"

    copy = Path(shutil.copytree(translator, tmp_path / "copy"))
    source = ship(copy)
    shutil.rmtree(copy)  # the worker can only have it from the object store
    folder, left, text = ray.get(translate.remote(source), timeout=120).split("|")
    assert folder != str(copy) and left == "False"
    assert text == sp.load(translator).generate(["the house"], max_new_tokens=MAX_NEW)[0].text
    broken = Path(shutil.copytree(translator, tmp_path / "broken"))
    data = bytearray((broken / "decoder.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (broken / "decoder.onnx.data").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        ray.get(translate.remote(ship(broken)), timeout=120)

    @ray.remote(num_cpus=1)
    def replica_folders(source) -> tuple[bool, bool, bool]:
        """A replica with --engine-process keeps its shipped copy (the engine process loads it
        again when the server starts) until it lets it go; one without removes it at once."""
        import os

        from seqport.engine.runtime import RuntimeOptions
        from seqport.serving.ray_app import load_replica_model

        kept, held = load_replica_model(source, "cpu", RuntimeOptions(), engine_process=True)
        alone, _ = load_replica_model(source, "cpu", RuntimeOptions(), engine_process=False)
        while_held = os.path.isdir(kept.folder)
        held.close()
        return while_held, os.path.isdir(kept.folder), os.path.isdir(alone.folder)

    assert ray.get(replica_folders.remote(source), timeout=120) == (True, False, False)


def test_serve_two_replicas_equal_the_local_engine(cluster, translator):
    import seqport.engine as sp
    from seqport.serving.ray_app import REPLICA_HEADER, app_builder

    (port,) = _free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # the documented `serve run seqport.serving.ray_app:app_builder key=value ...` entry point
        args = {"artifact": str(translator), "num_replicas": "2", "model_name": "translator", "max_batch_rows": "4"}
        serve.run(app_builder({**args, "max_queue": "8"}), name="seqport", route_prefix="/")
        prompts = _lines(20)
        model = sp.load(translator)
        expected = [r.text for r in model.generate(prompts, max_new_tokens=MAX_NEW)]
        url = f"http://127.0.0.1:{port}/v1/completions"

        def ask(i: int) -> tuple[str, str]:
            body = {"model": "translator", "prompt": prompts[i % 20], "max_tokens": MAX_NEW, "temperature": 0}
            response = httpx.post(url, json=body, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"], response.headers[REPLICA_HEADER]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(200)))
        assert [text for text, _ in answers] == [expected[i % 20] for i in range(200)]
        replicas = Counter(replica for _, replica in answers)
        assert len(replicas) == 2, f"requests per replica: {replicas}"
        _check_backpressure(url, prompts[0], model)
    finally:
        serve.shutdown()


def _check_backpressure(url: str, prompt: str, model) -> None:
    """64 concurrent long requests against 2 replicas that hold 4 + 8 each and a router queue of
    8: some are refused (503 from Serve, or 429 from a full replica queue), none fails otherwise,
    and every admitted one equals the local engine (exact counts vary; not asserted)."""
    long = 40
    expected = model.generate([prompt], max_new_tokens=long, min_new_tokens=long)[0].text
    body = {"model": "translator", "prompt": prompt, "max_tokens": long, "min_tokens": long, "temperature": 0}

    def ask(_: int) -> tuple[int, str]:
        response = httpx.post(url, json=body, timeout=120)
        return response.status_code, response.json()["choices"][0]["text"] if response.status_code == 200 else ""

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 1 and statuses[429] + statuses[503] >= 1, statuses
    assert all(text == expected for status, text in answers if status == 200)
