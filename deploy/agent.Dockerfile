# moodstream edge agent: keeps the subject's speech, streams 7 s chunks to a
# scoring server, keeps unacknowledged chunks in a durable outbox. No torch:
# the base install plus the (empty) `agent` extra only.
#
#   docker build -f deploy/agent.Dockerfile -t moodstream-agent:0.1.0 .       (from the repository root)
#   docker run --rm -e MOODSTREAM_TOKEN=... -v "$PWD/interview.wav:/audio/interview.wav:ro" \
#     -v moodstream-outbox:/var/lib/moodstream/outbox moodstream-agent:0.1.0 \
#     --server scoring-host:50051 --participant p001 /audio/interview.wav
#
# A microphone needs the `mic` extra (PyAudio) and the host's sound device;
# this image streams files and stdin ('-': raw PCM s16le mono).
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/moodstream \
    PATH=/opt/moodstream/bin:$PATH

RUN python -m venv /opt/moodstream

# Dependencies first (numpy, grpcio, soundfile, soxr, webrtcvad, ...; never torch).
COPY pyproject.toml /src/pyproject.toml
COPY deploy/pyproject_requirements.py /src/deploy/pyproject_requirements.py
RUN python /src/deploy/pyproject_requirements.py --pyproject /src/pyproject.toml agent > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# setuptools needs every package folder to build the wheel; only the agent's
# code is ever imported here (the server's imports torch only when it runs).
COPY README.md /src/README.md
COPY moodstream /src/moodstream
COPY agent /src/agent
COPY server /src/server
COPY model /src/model
COPY trainer /src/trainer
COPY dashboard /src/dashboard
COPY proto /src/proto
RUN pip install --no-deps "/src[agent]" \
    && pip check \
    && rm -rf /src \
    && python -c "import moodstream.agent, sys; sys.exit('torch' in sys.modules)"

RUN groupadd --system --gid 10001 moodstream \
    && useradd --system --uid 10001 --gid moodstream --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin moodstream \
    && mkdir -p /var/lib/moodstream/outbox \
    && chown -R moodstream:moodstream /var/lib/moodstream
USER 10001:10001

# Chunks wait here until the server acknowledges them: keep it on a volume so
# that a restarted agent resends them (`moodstream agent --flush`).
ENV MOODSTREAM_OUTBOX=/var/lib/moodstream/outbox
VOLUME ["/var/lib/moodstream/outbox"]

# The bearer token comes from the environment (MOODSTREAM_TOKEN), never from the image.
ENTRYPOINT ["moodstream", "agent"]
CMD ["--help"]
