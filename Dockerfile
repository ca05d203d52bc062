# turnout's own image: the CLI, the operator (`turnout operator`) and the router (`turnout route`).
# Model versions ship as Bentos (`bentoml build`), not in this image.
# torch resolves from PyPI by default; point PIP_EXTRA_INDEX_URL at a CPU-only torch index to
# keep the image small.
FROM python:3.11.11-slim-bookworm

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TURNOUT_HOME=/var/lib/turnout \
    BENTOML_HOME=/var/lib/turnout/bentoml \
    BENTOML_DO_NOT_TRACK=true

RUN groupadd --gid 10001 turnout \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin turnout

WORKDIR /app
COPY pyproject.toml constraints.txt README.md bentofile.yaml ./
COPY turnout ./turnout
COPY training ./training
COPY services ./services
COPY workflows ./workflows
COPY sdk ./sdk
# Editable, so /app stays the project root: the retrain workflow's package step runs
# `bentoml build` with /app/bentofile.yaml.
RUN pip install --no-cache-dir -c constraints.txt -e ./sdk \
    && pip install --no-cache-dir -c constraints.txt -e . \
    && mkdir -p /var/lib/turnout \
    && chown 10001:10001 /var/lib/turnout

# Runs as non-root with a read-only root filesystem: state goes to the /var/lib/turnout volume.
VOLUME ["/var/lib/turnout"]
USER 10001:10001
ENTRYPOINT ["turnout"]
CMD ["--help"]
