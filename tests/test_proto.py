"""The checked-in gRPC stubs match the .proto."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_stubs_are_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stale_stubs_are_detected(tmp_path):
    import shutil

    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    proto = copy / "moodstream" / "v1" / "moodstream.proto"
    proto.write_text(proto.read_text().replace("message End {", "message End {\n  bool abandoned = 9;"))
    result = subprocess.run([sys.executable, str(copy / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "stale stubs" in result.stderr


def test_evidence_sufficient_is_optional_and_unset_reads_as_sufficient():
    from moodstream import evidence_sufficient
    from moodstream.v1 import moodstream_pb2 as pb

    old_server = pb.ScoreUpdate.FromString(pb.ScoreUpdate(probability=0.7, above_threshold=True).SerializeToString())
    assert not old_server.HasField("evidence_sufficient") and evidence_sufficient(old_server)
    collecting = pb.ScoreUpdate.FromString(pb.ScoreUpdate(probability=0.7, evidence_sufficient=False)
                                           .SerializeToString())
    assert collecting.HasField("evidence_sufficient") and not evidence_sufficient(collecting)
