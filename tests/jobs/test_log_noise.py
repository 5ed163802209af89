"""TensorFlow's C++ and absl start-up noise leaves the streamed log, every line of the job's own
output stays, and the raw log keeps everything (`logs --raw`)."""

from __future__ import annotations

import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import cli, cloud, run_ids, text  # noqa: E402,F401

from jobs.runner import NoiseFilter  # noqa: E402

# What `import tensorflow` and a first op printed on this machine (TF 2.21, no GPU), verbatim.
TF_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796179965.932603    7358 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    "I0000 00:00:1796179965.933047    7358 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.\n"
    "I0000 00:00:1796179966.069611    7358 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.\n"
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "E0000 00:00:1796179973.244285    7358 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)\n"
    "2024-05-01 12:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:182] older TF's format\n"
)
OWN = (
    "Epoch 1, Loss: 0.1375, Accuracy: 95.86%, Test Loss: 0.0612, Test Accuracy: 97.97%\n"
    "I am the job: lines starting with I, W, E or F are mine too\n"
    "WARNING: my own warning, not absl's\n"
    "E0000 00:00:1.5 1 my_op.cc:7] a real error from a kernel: kept\n"
    "F0000 00:00:1.5 1 check.cc:9] Check failed: fatal lines precede a crash: kept\n"
    "progress 10%\rprogress 50%\rprogress 100%\n"
    "Epoch 2, Loss: 0.0431, Accuracy: 98.66%, Test Loss: 0.0550, Test Accuracy: 98.21%\n"
)


def interleaved() -> str:
    noise, own = TF_NOISE.split("\n"), OWN.split("\n")  # whole lines (\r redraws stay inside one)
    noise, own = [x + "\n" for x in noise[:-1]], [x + "\n" for x in own[:-1]]
    out = []
    for i in range(max(len(noise), len(own))):
        out += noise[i:i + 1] + own[i:i + 1]
    return "".join(out)


def test_noise_leaves_and_every_own_line_stays_whatever_the_chunks():
    raw = interleaved().encode()
    expected = OWN.encode()
    for size in (1, 2, 3, 7, 64, len(raw)):
        f = NoiseFilter()
        got = b"".join(f.feed(raw[i:i + size]) for i in range(0, len(raw), size)) + f.flush()
        assert got == expected, size
        assert f.dropped == len(TF_NOISE.splitlines())


def test_a_partial_line_is_not_held_unless_it_may_be_noise():
    f = NoiseFilter()
    assert f.feed(b"Epoch 1/5 [====") == b"Epoch 1/5 [===="  # a progress bar shows at once
    assert f.feed(b"==]\r==]\n") == b"==]\r==]\n"
    assert f.feed(b"I0000 00:00:1.2 ") == b""  # may be absl's: held until its line ends
    assert f.feed(b"1 x.cc:1] noise\nlast words") == b"last words"
    assert f.flush() == b""


def test_a_run_streams_and_stores_the_log_without_the_noise_and_keeps_the_raw_log(cloud, tmp_path):
    project = tmp_path / "noisy"
    project.mkdir()
    (project / "noisy.py").write_text(textwrap.dedent(f"""
        import sys
        noise = [x + "\\n" for x in {TF_NOISE!r}.split("\\n")[:-1]]
        own = [x + "\\n" for x in {OWN!r}.split("\\n")[:-1]]
        for i in range(max(len(noise), len(own))):
            sys.stderr.write("".join(noise[i:i + 1])); sys.stderr.flush()
            sys.stdout.write("".join(own[i:i + 1])); sys.stdout.flush()
    """))
    (project / "job.yaml").write_text("name: noisy\ndescription: prints TensorFlow's start-up noise\n"
                                      "command: [python3, noisy.py]\n")
    r = cli(cloud, "run", str(project / "job.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for line in OWN.replace("\r", "\n").split("\n"):  # streamed to the terminal (text mode: \r is \n)
        assert line in r.stdout, r.stdout
    assert "cuInit" not in r.stdout and "oneDNN" not in r.stdout and "absl::InitializeLog" not in r.stdout
    run_id = run_ids(cloud.bucket)[0]
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert all(line in log for line in OWN.split("\n"))
    assert "cuInit" not in log and "To enable the following instructions" not in log
    assert f"{len(TF_NOISE.splitlines())} line(s) of TensorFlow's C++/absl start-up logging left out" in log
    r = cli(cloud, "logs", run_id, "--raw")
    assert r.returncode == 0
    assert all(line in r.stdout for line in TF_NOISE.split("\n") + OWN.replace("\r", "\n").split("\n"))
    r = cli(cloud, "logs", run_id)
    assert r.stdout == log.replace("\r", "\n")  # text mode
