"""Finding inputs, naming outputs, deciding what a rerun redoes, stdout in each format."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest

from malmm_cli.commands.progress import Reporter
from malmm_cli.jobs.batch import plan_resume, run_batch, write_results
from malmm_cli.jobs.records import Settings, differences, read_record, record, record_path
from malmm_cli.media.inputs import Input, expand_inputs, name_outputs
from malmm_cli.media.plans import VideoError
from malmm_cli.media.probe import check_readable
from malmm_cli.output.stdout import StdoutWriter
from malmm_cli.reading.results import VideoResult


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_are_searched_recursively_for_videos(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.mp4")
    touch(tmp_path / "in" / "deep" / "b.MKV")
    touch(tmp_path / "in" / "notes.txt")
    touch(tmp_path / "in" / ".hidden" / "c.mp4")
    touch(tmp_path / "in" / "._a.mp4")  # macOS resource fork
    explicit = touch(tmp_path / "song.m4a")  # an explicit file is tried whatever its extension
    (tmp_path / "in" / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")  # kept, to fail with its reason
    inputs, failures = expand_inputs([tmp_path / "in", explicit, tmp_path / "in" / "a.mp4"])
    assert [(i.path.name, str(i.stem)) for i in inputs] == [
        ("a.mp4", "a"), ("b.MKV", "deep/b"), ("gone.mp4", "gone"), ("song.m4a", "song")]  # fmt: skip
    with pytest.raises(VideoError, match=r"a broken link: .*deleted\.mp4 is not there"):
        check_readable(tmp_path / "in" / "gone.mp4")
    assert failures == []


def test_manifests_list_videos(tmp_path: Path) -> None:
    """@FILE: one path per line or JSONL rows with "video", relative to the manifest; clips refused."""
    touch(tmp_path / "archive" / "day1" / "cam.mp4")
    touch(tmp_path / "archive" / "day2" / "cam.mp4")
    elsewhere = touch(tmp_path / "other" / "x.mp4")
    lines = tmp_path / "archive" / "list.txt"
    lines.write_text(f"# two days\nday1/cam.mp4\n\nday2/cam.mp4\n{elsewhere}\n")
    inputs, failures = expand_inputs([Path(f"@{lines}")])
    assert [str(i.stem) for i in inputs] == ["day1/cam", "day2/cam", "x"] and failures == []
    rows = tmp_path / "archive" / "list.jsonl"
    rows.write_text(
        '{"video": "day1/cam.mp4"}\n{"video": "day2/cam.mp4", "start": 5, "end": 9.5}\n'
        '{"video": "day2/cam.mp4", "start": 9}\nnot json\n'
        '{"video": "day1/cam.mp4", "start": 3, "end": 2}\n'
    )
    inputs, failures = expand_inputs([Path(f"@{rows}")])  # clips of one video are separate inputs
    assert [(str(i.stem), i.clip) for i in inputs] == [("day1/cam", (None, None)), ("day2/cam_5-9.5", (5.0, 9.5)),
                                                       ("day2/cam_9-end", (9.0, None))]  # fmt: skip
    assert [f.path for f in failures] == [f"{rows}:4", f"{rows}:5"] and "must be after start" in failures[1].detail
    inputs, failures = expand_inputs([Path(f"@{tmp_path / 'missing.txt'}")])
    assert not inputs and "cannot read the manifest" in failures[0].detail


def test_missing_paths_are_kept_to_fail_later_and_empty_folders_fail(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    inputs, failures = expand_inputs([tmp_path / "missing.mp4", tmp_path / "empty"])
    assert [i.path.name for i in inputs] == ["missing.mp4"]
    assert len(failures) == 1 and failures[0].status == "failed" and "no video files" in failures[0].detail


def test_symlink_loops_are_one_failure_not_a_crash(tmp_path: Path) -> None:
    """A symlink loop given as an argument used to abort the whole run with a traceback."""
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    folder = tmp_path / "folder"
    touch(folder / "a.mp4")
    (folder / "up").symlink_to(folder)  # a link back up the tree: not followed
    inputs, failures = expand_inputs([loop, folder])
    assert [i.path.name for i in inputs] == ["loop.mp4", "a.mp4"] and failures == []  # kept, to fail when read
    with pytest.raises(VideoError, match=r"^a symbolic link that points back to itself$"):
        check_readable(loop)


def test_same_name_other_extension_keeps_the_extension(tmp_path: Path) -> None:
    """clip.mp4 and clip.mkv in one folder used to make the whole -o run a usage error."""
    for name in ("clip.mp4", "clip.mkv", "other.mp4"):
        touch(tmp_path / "in" / name)
    inputs, _ = expand_inputs([tmp_path / "in"])
    named, clashes = name_outputs(inputs)
    assert sorted(str(i.stem) for i in named) == ["clip.mkv", "clip.mp4", "other"] and clashes == []
    _, clashes = name_outputs([Input(tmp_path / "a" / "x.mp4", Path("x")), Input(tmp_path / "b" / "x.mp4", Path("x"))])
    assert clashes == [f"{tmp_path / 'a' / 'x.mp4'} and {tmp_path / 'b' / 'x.mp4'}"]


def settings(**request: object) -> Settings:
    return Settings("ask", request, "model@rev", None, "frames=20,seek=exact", 10, {"dtype": "auto"}, {"num_beams": 5})


def result(name: str) -> VideoResult:
    return VideoResult(name, "caption", 4.0, 2, 0.0, 3.0, caption=f"caption of {name}")


def test_a_rerun_skips_only_results_made_the_same_way(tmp_path: Path) -> None:
    """Resume used to look at file names only: a second question was 'already done'."""
    video = touch(tmp_path / "clip.mp4")
    item, out = Input(video, Path("clip")), tmp_path / "out"
    first = settings(questions=["what colour is the car?"])
    write_results(result(str(video)), out, item, first, ["json"])
    assert sorted(p.name for p in out.iterdir()) == [".malmm", "clip.ask.json"]
    assert plan_resume([item], out, first, ["json"], overwrite=False).skipped  # same settings: skipped
    second = settings(questions=["who drives?"])
    resume = plan_resume([item], out, second, ["json"], overwrite=False)
    assert resume.pending == [item] and resume.redone == {str(video): ["questions"]}
    assert plan_resume([item], out, first, ["json", "srt"], overwrite=False).pending == [item]  # a format missing
    assert plan_resume([item], out, first, ["json"], overwrite=True).pending == [item]
    os.utime(video, ns=(1, 1))  # the video changed
    assert plan_resume([item], out, first, ["json"], overwrite=False).redone == {str(video): ["the video file"]}
    recorded = read_record(record_path(out, item.stem, "ask"))
    assert recorded["settings"]["request"] == {"questions": ["what colour is the car?"]}
    assert recorded["formats"] == ["json"] and recorded["settings"]["version"]


def test_results_without_a_record_are_redone(tmp_path: Path) -> None:
    video = touch(tmp_path / "clip.mp4")
    item, out = Input(video, Path("clip")), tmp_path / "out"
    touch(out / "clip.ask.json")  # made by an older malmm, or by hand
    resume = plan_resume([item], out, settings(questions=["q"]), ["json"], overwrite=False)
    assert resume.pending == [item] and resume.redone == {str(video): ["no record of how they were made"]}


def test_the_record_goes_before_and_comes_back_after_the_results(tmp_path: Path, monkeypatch) -> None:
    video = touch(tmp_path / "clip.mp4")
    item, out = Input(video, Path("clip")), tmp_path / "out"
    write_results(result(str(video)), out, item, settings(questions=["q"]), ["json", "srt"])
    from malmm_cli.jobs import batch

    def disk_full_on_srt(path: Path, text: str) -> None:
        if path.suffix == ".srt":
            raise OSError(28, "No space left on device")
        original(path, text)

    original = batch.write_atomic
    monkeypatch.setattr(batch, "write_atomic", disk_full_on_srt)
    with pytest.raises(OSError):
        write_results(result(str(video)), out, item, settings(questions=["other"]), ["json", "srt"])
    assert read_record(record_path(out, item.stem, "ask")) is None  # json is new, srt old: no record vouches
    assert plan_resume([item], out, settings(questions=["q"]), ["json", "srt"], overwrite=False).pending == [item]


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    """Results used to be created with mode 0600 whatever the umask."""
    video = touch(tmp_path / "clip.mp4")
    old = os.umask(0o022)
    try:
        write_results(result(str(video)), tmp_path / "out", Input(video, Path("clip")), settings(), ["txt", "json"])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert modes == {"clip.ask.txt": 0o644, "clip.ask.json": 0o644}


def test_stdout_json_is_an_object_for_one_file_and_a_list_otherwise() -> None:
    single = io.StringIO()
    writer = StdoutWriter("json", single=True, stream=single)
    writer.add(result("a.mp4"))
    writer.close()
    assert json.loads(single.getvalue())["caption"] == "caption of a.mp4"
    several = io.StringIO()
    writer = StdoutWriter("json", single=False, stream=several)
    writer.add(result("a.mp4"))
    writer.add(result("b.mp4"))
    writer.close()
    writer.close()  # closing twice (after an interrupt) prints it once
    assert [d["file"] for d in json.loads(several.getvalue())] == ["a.mp4", "b.mp4"]
    empty = io.StringIO()
    StdoutWriter("json", single=False, stream=empty).close()
    assert json.loads(empty.getvalue()) == []


def test_stdout_streams_jsonl_csv_and_txt() -> None:
    for fmt, check in (
        ("jsonl", lambda text: [json.loads(line)["file"] for line in text.splitlines()] == ["a.mp4", "b.mp4"]),
        ("csv", lambda text: text.count("file,task,start") == 1 and text.count("caption of") == 2),
        ("txt", lambda text: text.startswith("# a.mp4\ncaption of a.mp4\n") and "\n# b.mp4\n" in text),
    ):
        stream = io.StringIO()
        writer = StdoutWriter(fmt, single=False, stream=stream)
        writer.add(result("a.mp4"))
        writer.add(result("b.mp4"))
        writer.close()
        assert check(stream.getvalue()), (fmt, stream.getvalue())


def test_records_from_before_the_memory_choice_count_as_malmm(tmp_path: Path) -> None:
    video = touch(tmp_path / "clip.mp4")
    old = record(settings(), video, ["json"])
    del old["settings"]["memory"]  # what malmm wrote before --memory existed
    assert differences(old, settings(), video) == []
    assert differences(old, dataclasses.replace(settings(), memory="fifo"), video) == ["memory"]


def test_a_batch_writes_each_video_when_it_ends_and_prints_in_input_order(tmp_path: Path) -> None:
    items = [Input(touch(tmp_path / f"{name}.mp4"), Path(name)) for name in ("long", "short", "bad")]
    written: list[str] = []

    def read(group, _progress, done):
        short, bad = result(str(group[1].path)), VideoError("damaged")
        done(1, short)  # the short video ends first
        written.extend(p.name for p in (tmp_path / "out").glob("*.json"))
        done(2, bad)
        return [result(str(group[0].path)), short, bad]  # the long one ends last

    stdout = io.StringIO()
    outcomes = run_batch(items, read, reporter=Reporter(quiet=True), formats=["json"], output_dir=tmp_path / "out",
                         stdout=StdoutWriter("jsonl", single=False, stream=stdout), settings=settings(),
                         videos_at_once=3)  # fmt: skip
    assert written == ["short.ask.json"]  # on disk before the long video was done
    assert [o.status for o in outcomes] == ["done", "done", "failed"]
    assert [Path(json.loads(line)["file"]).name for line in stdout.getvalue().splitlines()] == ["long.mp4", "short.mp4"]


def test_skipped_videos_are_printed_from_their_files_in_their_place(tmp_path: Path) -> None:
    items = [Input(touch(tmp_path / f"{name}.mp4"), Path(name)) for name in ("a", "b", "c", "d", "e")]
    out = tmp_path / "out"
    for item in (items[0], items[2]):  # a and c were done by an earlier run
        write_results(result(str(item.path)), out, item, settings(), ["jsonl"])
    resume = plan_resume(items, out, settings(), ["jsonl"], overwrite=False)
    assert [i.stem.name for i in resume.pending] == ["b", "d", "e"] and len(resume.skipped) == 2
    groups: list[list[str]] = []

    def read(group, _progress, done):
        groups.append([item.stem.name for item in group])
        return [result(str(item.path)) for item in group]

    stdout = io.StringIO()
    outcomes = run_batch(items, read, reporter=Reporter(quiet=True), formats=["jsonl"], output_dir=out,
                         stdout=StdoutWriter("jsonl", single=False, stream=stdout), settings=settings(),
                         videos_at_once=2, skipped=resume)  # fmt: skip
    assert groups == [["b", "d"], ["e"]]  # skipped ones take no place in a batch
    assert [o.status for o in outcomes] == ["skipped", "done", "skipped", "done", "done"]
    assert [Path(json.loads(line)["file"]).stem for line in stdout.getvalue().splitlines()] == list("abcde")


def test_ctrl_c_mid_batch_still_prints_the_videos_that_finished(tmp_path: Path) -> None:
    items = [Input(touch(tmp_path / f"{name}.mp4"), Path(name)) for name in ("long", "short")]

    def read(group, _progress, done):
        done(1, result(str(group[1].path)))  # waits on stdout for the long one, which never ends
        raise KeyboardInterrupt

    stdout = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_batch(items, read, reporter=Reporter(quiet=True), formats=["json"], output_dir=None,
                  stdout=StdoutWriter("jsonl", single=False, stream=stdout), settings=settings(),
                  videos_at_once=2)  # fmt: skip
    assert [Path(json.loads(line)["file"]).name for line in stdout.getvalue().splitlines()] == ["short.mp4"]
