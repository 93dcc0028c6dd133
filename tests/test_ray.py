"""`--engine ray`: the same results as the local engine, from Ray Data actors on a local cluster
started here; failures stay with their video, a killed actor costs only the video it was reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import ray
from ray.util.annotations import RayDeprecationWarning
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs.loading import LoadOptions
from malmm_cli.jobs.ray_engine import DIED_TWICE, RayOptions, ReadJob, ray_reader
from malmm_cli.media.inputs import Input
from malmm_cli.media.plans import VideoError
from malmm_cli.reading.pipeline import Memory, Sampling, caption_readers
from malmm_cli.reading.results import VideoResult
from models import GenerationSettings
from tests import media

SMALL = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2", "--num-beams", "1", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine, for this module (Ray 2.60 has no local mode)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-videos")
    for number in range(3):
        media.make_video(folder / f"clip{number}.mp4", seconds=2, fps=10, size=(64, 48), seed=number)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder


def caption(*args: object):
    return CliRunner().invoke(app, ["caption", *(str(a) for a in args)], catch_exceptions=False)


def test_ray_engine_writes_what_the_local_engine_writes(
    cluster: None, tiny_llama_dir: Path, videos: Path, tmp_path: Path
) -> None:
    common = [videos, "--model", tiny_llama_dir, *SMALL, "--format", "json", "--format", "txt"]
    local = caption(*common, "-o", tmp_path / "local")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on_ray = caption(*common, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert not [w for w in caught if issubclass(w.category, RayDeprecationWarning)]  # malmm's call says nothing
    assert local.exit_code == on_ray.exit_code == 1  # the broken video fails, on either engine
    assert "broken.mp4" in on_ray.output and "not a video file" in on_ray.output
    written = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_file())
    assert written == sorted(p.name for p in (tmp_path / "ray").iterdir() if p.is_file())
    assert len(written) == 6  # 3 videos x json, txt
    for name in written:
        assert (tmp_path / "local" / name).read_text() == (tmp_path / "ray" / name).read_text(), name
    clips = videos / "clips.jsonl"  # clips of a video, from a manifest: the same on both engines
    clips.write_text('{"video": "clip0.mp4", "start": 0.5, "end": 1.5}\n{"video": "clip1.mp4", "start": 1}\n')
    for engine, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        assert caption(f"@{clips}", *common[1:], "-o", tmp_path / f"clips-{engine}", *extra).exit_code == 0
    clip_results = sorted(p.name for p in (tmp_path / "clips-ray").iterdir() if p.is_file())
    assert clip_results == ["clip0_0.5-1.5.caption.json", "clip0_0.5-1.5.caption.txt", "clip1_1-end.caption.json",
                            "clip1_1-end.caption.txt"]  # fmt: skip
    for name in clip_results:
        assert (tmp_path / "clips-local" / name).read_text() == (tmp_path / "clips-ray" / name).read_text(), name
    read = json.loads((tmp_path / "clips-ray" / "clip0_0.5-1.5.caption.json").read_text())
    assert read["frames"] == 4 and read["first_frame"] >= 0.5 and read["last_frame"] < 1.5  # the clip's frames only

    manifest = videos / "list.txt"  # the same videos listed in a manifest: the same result names
    manifest.write_text("".join(f"clip{number}.mp4\n" for number in range(3)))
    again = caption(f"@{manifest}", *common[1:], "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert again.exit_code == 0 and again.output.count("skipped") == 3  # finished videos are not read again


def test_a_killed_worker_loses_only_its_video(
    cluster: None, tiny_llama_dir: Path, videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A video whose actor dies is read again by a restarted actor; one that kills it twice
    fails alone with that reason; a video failing inside an actor is an error row. Ray's
    `(raylet)` lines about the deaths go to stderr: stdout carries results only (JSONL for jq)."""
    once, always, failing = videos / "clip0.mp4", videos / "clip1.mp4", videos / "clip2.mp4"
    marker = tmp_path / "killed-once"

    class Deadly(Sampling):  # defined here, so Ray sends it to the actors by value
        def plan(self, info):
            path = str(info.path)
            if path == str(always) or (path == str(once) and not marker.exists()):
                marker.touch()
                os._exit(1)  # as the kernel's OOM killer would
            if path == str(failing):
                raise VideoError("made to fail")
            return super().plan(info)

    job = ReadJob(
        load=LoadOptions(model=str(tiny_llama_dir), device="cpu", quantize="none"), readers=tuple(caption_readers()),
        task="caption", sampling=Deadly(frames=4), memory=Memory(2), settings=GenerationSettings(4, num_beams=1),
        cache=False,
    )  # fmt: skip
    items = [Input(path, Path(path.stem)) for path in (once, always, failing)]
    finished = []
    read = ray_reader(job, RayOptions(workers=2, gpus_per_worker=0), show_progress=False)
    results = read(items, [_NoProgress() for _ in items], lambda number, result: finished.append(number))
    printed = capsys.readouterr()
    assert "(raylet)" not in printed.out and "worker died" not in printed.out, printed.out
    assert isinstance(results[0], VideoResult) and results[0].frames == 4
    assert isinstance(results[1], VideoError) and str(results[1]) == DIED_TWICE
    assert isinstance(results[2], VideoError) and str(results[2]) == "made to fail"
    assert sorted(finished) == [0, 1, 2] and marker.exists()


def test_a_cluster_that_refuses_the_token_is_one_line_before_any_video(tiny_llama_dir: Path, videos: Path,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """--address of a cluster whose token authentication refuses this machine's token: one line
    saying so and exit status 2, before any video (it failed each video after ~20 s before)."""
    home = tmp_path / "home"  # no ~/.ray/auth_token of the user's is read or written
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); "
         "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**env, "RAY_AUTH_TOKEN": "the-cluster-s-token-0123456789abcdef"},
    )  # fmt: skip
    try:
        address = head.stdout.readline().strip()
        assert address, "the token-authenticated cluster did not start"
        command = [str(Path(sys.executable).parent / "malmm"), "caption", str(videos / "clip0.mp4"), str(videos /
                   "clip1.mp4"), "--model", str(tiny_llama_dir), *SMALL, "--engine", "ray", "--address", address,
                   "-f", "jsonl", "-o", str(tmp_path / "out")]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                              env={**env, "RAY_AUTH_TOKEN": "another-token-0123456789abcdef0123"})  # fmt: skip
    finally:
        head.stdin.close()
        head.wait(60)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(errors) == 1 and f"cannot join the Ray cluster at {address}" in errors[0], done.stderr
    assert "token authentication refused" in errors[0] and "RAY_AUTH_TOKEN" in errors[0]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "out").glob("*.json*"))  # no video was read


class _NoProgress:
    frames = 0


def test_without_ray_the_engine_says_how_to_get_it(
    tiny_llama_dir: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    result = caption(videos / "clip0.mp4", "--model", tiny_llama_dir, *SMALL, "--engine", "ray", "-o", tmp_path)
    assert result.exit_code == 2 and "pip install 'malmm[ray]'" in result.output


def test_ray_engine_finds_what_the_local_engine_finds(
    cluster: None, tiny_llama_dir: Path, videos: Path, tmp_path: Path
) -> None:
    """`malmm find` on Ray: its readers (one per query, scored windows) travel to the actors, and
    every moment and curve equals the local engine's."""
    common = ["find", videos, "red", "--model", tiny_llama_dir, "--device", "cpu", "--fps", "4", "--window", "1s",
              "--format", "json"]  # fmt: skip
    for engine, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        done = CliRunner().invoke(app, [str(a) for a in (*common, "-o", tmp_path / engine, *extra)],
                                  catch_exceptions=False)  # fmt: skip
        assert done.exit_code == 1 and "broken.mp4" in done.output  # the broken video fails alone
    written = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_file())
    assert written == sorted(p.name for p in (tmp_path / "ray").iterdir() if p.is_file()) and len(written) == 3
    for name in written:
        local, on_ray = (json.loads((tmp_path / side / name).read_text()) for side in ("local", "ray"))
        assert local == on_ray and len(on_ray["curve"]) == 2, name  # 2 s clips, 1 s windows
